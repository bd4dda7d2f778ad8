"""Recovery of container cgroups no record owns: ``calyx-<id>`` (and its conmon's) below a known parent.

They are what a removal whose cgroup step failed (a busy cgroup), or a crash with a store that lost its
last commits and a container dir already gone, leaves behind; they also keep the pod's parent cgroup
from being removed. Only the parents this daemon knows are looked at (its pods', its containers' and the
driver's default). Other Calyx daemons on the host may share a parent (tests do), so a leftover is
removed only when it is ours for sure: nothing runs in it any more, or what runs is a conmon reporting
to our exit dir, or our runc still keeps state of that id. Anything else is logged and kept.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

from sandbox.cgroups import CgroupDriver

log = logging.getLogger("cri.containers")


def sweep_orphan_cgroups(
    driver: CgroupDriver,
    known: set[str],
    parents: Iterable[str],
    exit_dir: Path,
    runtime_roots: Iterable[Path],
    failed: dict[str, str] | None = None,
) -> list[str]:
    """Remove the container cgroups below ``parents`` whose id is not in ``known``; returns the ids.
    Those whose removal failed go to ``failed`` (id -> error), the others are removed regardless."""
    roots = list(runtime_roots)
    removed: list[str] = []
    for parent in sorted(set(parents)):
        try:
            found = driver.container_ids_under(parent)
        except Exception:  # a parent in another driver's syntax (config changed), say
            log.debug("cgroup parent not swept", extra={"cgroup_parent": parent}, exc_info=True)
            continue
        for cid in sorted(found - known):
            if not _ours(driver, cid, parent, exit_dir, roots):
                log.warning(
                    "container cgroup of another runtime kept",
                    extra={"container_id": cid, "cgroup_parent": parent},
                )
                continue
            log.warning(
                "removing the cgroups of a container the store does not know",
                extra={"container_id": cid, "cgroup_parent": parent},
            )
            try:
                driver.remove_container(cid, parent)
                removed.append(cid)
            except Exception as exc:
                log.exception("orphan cgroup removal failed", extra={"container_id": cid})
                if failed is not None:
                    failed[cid] = str(exc)
    return removed


def _ours(driver: CgroupDriver, cid: str, parent: str, exit_dir: Path, roots: list[Path]) -> bool:
    pids = driver.all_pids(cid, parent)
    if not pids:
        return True  # an empty leftover: nothing of anyone runs there
    if any((root / cid).exists() for root in roots):
        return True
    return any(_reports_to(pid, exit_dir) for pid in pids)


def _reports_to(pid: int, exit_dir: Path) -> bool:
    """``pid`` is a conmon started with ``--exit-dir exit_dir``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = str(exit_dir).encode()
    return any(arg == b"--exit-dir" and value == wanted for arg, value in itertools.pairwise(argv))
