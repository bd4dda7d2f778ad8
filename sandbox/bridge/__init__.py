"""The built-in pod network, used when no CNI config exists: a bridge, a veth per pod, leases in the store,
masquerade and hostPort forwarding in iptables chains of its own."""

from sandbox.bridge.network import BridgeNetwork

__all__ = ["BridgeNetwork"]
