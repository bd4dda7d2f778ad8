"""The built-in pod network, used when no CNI config exists: a bridge, a veth per pod, leases in the store,
masquerade and hostPort forwarding in iptables chains of its own. The bridge and chains are made once and
kept until ``calyx cleanup``."""

from sandbox.bridge.network import BridgeNetwork, cleanup_network

__all__ = ["BridgeNetwork", "cleanup_network"]
