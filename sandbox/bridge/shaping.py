"""Traffic shaping of built-in network pods from kubelet's bandwidth annotations.

A token bucket (tc ``tbf``) on the egress side of each end of the pod's veth pair: the host end shapes
what the pod receives (ingress rate), the pod's ``eth0`` what it sends (egress rate). Without
CAP_NET_ADMIN a container cannot remove the latter. Both go with the veth pair at detach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calyx_base import proc

TIMEOUT_S = 30.0
LATENCY = "25ms"  # how long a packet may wait in the bucket before it is dropped
MIN_BURST_BYTES = 32 * 1024


def _tbf(rate_bits: int) -> list[str]:
    """tbf parameters for ``rate_bits`` per second; the bucket holds 100 ms of traffic (at least 32 KiB)."""
    burst = max(rate_bits // 8 // 10, MIN_BURST_BYTES)
    return ["tbf", "rate", f"{rate_bits}bit", "burst", str(burst), "latency", LATENCY]


def apply(host_veth: str, netns: Path, bandwidth: dict[str, Any], pod_id: str) -> None:
    if bandwidth.get("ingressRate"):
        argv = ["tc", "qdisc", "replace", "dev", host_veth, "root", *_tbf(int(bandwidth["ingressRate"]))]
        proc.run(argv, TIMEOUT_S, object_id=pod_id)
    if bandwidth.get("egressRate"):
        argv = ["nsenter", f"--net={netns}", "--", "tc", "qdisc", "replace", "dev", "eth0", "root"]
        proc.run([*argv, *_tbf(int(bandwidth["egressRate"]))], TIMEOUT_S, object_id=pod_id)
