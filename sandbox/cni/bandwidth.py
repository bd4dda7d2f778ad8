"""Pod traffic shaping from kubelet's annotations, as the CNI ``bandwidth`` capability.

kubelet passes ``kubernetes.io/ingress-bandwidth`` and ``kubernetes.io/egress-bandwidth`` (Kubernetes
quantities in bits per second, e.g. ``10M``) as pod annotations; a runtime turns them into the
``bandwidth`` capability argument that the CNI bandwidth plugin reads. The plugin insists on a burst
with every rate; like kubelet's own kubenet did, the burst is left unlimited (2^31-1 bits).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

INGRESS = "kubernetes.io/ingress-bandwidth"
EGRESS = "kubernetes.io/egress-bandwidth"
UNLIMITED_BURST = 2**31 - 1
# Rates the plugin can express (tc takes 32-bit byte rates): 1 kbit/s to 32 Gbit/s.
MIN_RATE, MAX_RATE = 1000, 32 * 10**9

_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")


def parse_rate(text: str) -> int:
    """A Kubernetes quantity as bits per second; ValueError naming the problem."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 10M or 512Ki")
    try:
        rate = int(Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""])
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"{text!r} is outside 1k..32G bits per second")
    return rate


def from_annotations(annotations: dict[str, str]) -> dict[str, Any]:
    """The ``bandwidth`` capability argument ({} when the pod asks for no shaping)."""
    capability: dict[str, Any] = {}
    for key, direction in ((INGRESS, "ingress"), (EGRESS, "egress")):
        if annotations.get(key):
            capability[f"{direction}Rate"] = parse_rate(annotations[key])
            capability[f"{direction}Burst"] = UNLIMITED_BURST
    return capability
