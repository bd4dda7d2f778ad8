"""One entry point for both cgroup versions: ``read_cgroup(dirs)``.

The cgroup driver (sandbox/cgroups) answers where a cgroup is with a controller -> directory map. On
v1 the keys are controller names; on v2 (unified) there is one directory, whatever its key. The version
is told by the directory's files, not by configuration, so a hybrid host reads its v1 controllers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from metrics import cgroup_v1, cgroup_v2
from metrics.psi import read_pressure
from metrics.readings import CgroupSample


def is_v2(dirs: Mapping[str, Path]) -> bool:
    """v2 has one directory for every controller, and only v2 directories hold cgroup.controllers."""
    unique = set(dirs.values())
    return len(unique) == 1 and (next(iter(unique)) / "cgroup.controllers").exists()


def read_cgroup(dirs: Mapping[str, Path]) -> CgroupSample:
    """Sample the cgroup described by ``dirs`` (controller -> dir; v2: one dir).

    On v1, a ``"unified"`` entry (the cgroup's directory in a hybrid host's cgroup2 mount) is read for
    pressure stall information only.
    """
    if is_v2(dirs):
        unified: Path | None = next(iter(dirs.values()))
        assert unified is not None
        sample = cgroup_v2.read(unified)
    else:
        unified = dirs.get("unified")
        sample = cgroup_v1.read({k: v for k, v in dirs.items() if k != "unified"})
    if unified is not None and (sample.cpu is not None or sample.memory is not None):
        psi = read_pressure(str(unified))
        if psi:
            sample = dataclasses.replace(sample, psi=psi)
    return sample
