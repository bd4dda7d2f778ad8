"""Pod sandboxes: lifecycle, index and recovery (``runtime.pods``); kernel pieces live in sandbox/."""

from cri.pods.model import NOTREADY, READY, Pod, PodMetadata
from cri.pods.service import PodService

__all__ = ["NOTREADY", "READY", "Pod", "PodMetadata", "PodService", "register", "register_removals"]


def register(runtime: object) -> None:
    """Subsystem builder: attach ``runtime.pods`` and let it report the network condition."""
    from cri.runtime import Runtime

    assert isinstance(runtime, Runtime)
    pods = PodService(runtime)
    runtime.register("pods", pods)
    runtime.network_readiness = pods.networks.readiness


def register_removals(runtime: object) -> None:
    """Subsystem builder, after containers: finish the pod removals a crash interrupted."""
    from cri.pods.remove import PendingRemovals
    from cri.runtime import Runtime

    assert isinstance(runtime, Runtime)
    runtime.register("pod_removals", PendingRemovals(runtime.pods))  # type: ignore[attr-defined]
