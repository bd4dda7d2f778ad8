"""The containers subsystem: its parts by job, built from the collaborators the daemon hands over.

``records`` (the index, names, locks, images in use), ``exits`` (fresh states), ``lifecycle`` (the
RPCs that change a container), ``execs`` (ExecSync and streaming exec), ``listing`` and ``usage`` (what
List and ImageFsInfo answer), ``recovery`` (at start).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calyx_base.cleanups import Cleanups
from cri.config import RuntimeConfig
from cri.containers import cdi
from cri.containers.create import CreateDeps
from cri.containers.deps import ContainerEvents, ImageResolver, PodLookup
from cri.containers.exec import ContainerExec
from cri.containers.exits import ExitTracker
from cri.containers.lifecycle import ContainerLifecycle
from cri.containers.listing import ContainerListing
from cri.containers.monitors import Monitors
from cri.containers.records import ContainerRecords
from cri.containers.recovery import ContainerRecovery
from cri.containers.usage import WritableLayers
from sandbox.apparmor import AppArmor
from sandbox.cgroups import CgroupDriver


@dataclass(frozen=True)
class Containers:
    records: ContainerRecords
    monitors: Monitors
    exits: ExitTracker
    lifecycle: ContainerLifecycle
    execs: ContainerExec
    listing: ContainerListing
    usage: WritableLayers
    recovery: ContainerRecovery

    def recover(self) -> None:
        self.recovery.recover()

    def close(self) -> None:
        """Stop watching exits; containers keep running under their monitors."""
        self.exits.close()
        self.execs.close()


def build_containers(
    records: ContainerRecords,
    handlers: RuntimeConfig,
    systemd_cgroup: bool,
    run_root: Path,
    pods: PodLookup,
    images: ImageResolver,
    cgroups: CgroupDriver,
    events: ContainerEvents,
    cleanups: Cleanups,
    apparmor: AppArmor,
) -> Containers:
    monitors = Monitors(handlers, run_root, systemd_cgroup)
    exits = ExitTracker(records, monitors, cgroups, events)
    # The CDI devices of this node (runtime.cdi_spec_dirs), re-read when a spec file changes.
    devices = cdi.Registry(handlers.cdi_spec_dirs)
    creating = CreateDeps(
        records,
        monitors,
        exits,
        pods,
        images,
        cgroups,
        devices,
        apparmor,
        cleanups,
        handlers.default_handler,
        run_root,
    )
    lifecycle = ContainerLifecycle(records, monitors, exits, pods, cgroups, events, creating, run_root)
    recovery = ContainerRecovery(records, monitors, exits, lifecycle, pods, cgroups, cleanups, run_root)
    return Containers(
        records,
        monitors,
        exits,
        lifecycle,
        ContainerExec(exits, monitors),
        ContainerListing(exits),
        WritableLayers(records.containers_dir),
        recovery,
    )
