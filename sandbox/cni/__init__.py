"""CNI: pod networking by the plugins of a network config list (spec 1.0.0, also 0.4.0 and 0.3.x)."""

from sandbox.cni.config import NetworkList, find_config, load
from sandbox.cni.invoke import PluginError
from sandbox.cni.network import CNINetwork, PodRef

__all__ = ["CNINetwork", "NetworkList", "PluginError", "PodRef", "find_config", "load"]
