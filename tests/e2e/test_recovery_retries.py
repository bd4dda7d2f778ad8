"""Recovery never stops the daemon: what it cannot clean up at start is logged, counted in
calyx_recovery_failures_total{what}, retried while the daemon serves, and gone once it can go.

Real leftovers made undeletable for a while by real bind mounts (as a volume or a rootfs still
mounted would be), and the failpoints of each kind of cleanup (calyx_base/failpoints.py: cleanup.<what>).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cri.api import api_pb2 as pb
from tests.daemon import Daemon
from tests.net_fixtures import free_port
from tests.waiting import wait_for

_SAMPLE = re.compile(r'^(\w+)\{what="(\w+)"\} (\S+)$')


def recovery_metrics(port: int) -> dict[tuple[str, str], float]:
    """calyx_recovery_* samples by (name, what) from the daemon's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1).startswith("calyx_recovery_"):
            found[(match.group(1), match.group(2))] = float(match.group(3))
    return found


def ready(d: Daemon) -> bool:
    status = d.runtime.Status(pb.StatusRequest(), timeout=30).status
    return {c.type: c.status for c in status.conditions}["RuntimeReady"]


def bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True, timeout=30)


def unmount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=False, timeout=30)


def test_leftovers_that_cannot_go_yet_are_counted_and_retried_until_they_go(
    daemon_factory: Callable[..., Daemon], short_tmp: Path
) -> None:
    port = free_port()
    config = {"metrics": {"enabled": True, "port": port}, "state": {"cleanup_retry_seconds": 0.5}}
    d = daemon_factory(config)
    d.stop()
    volume = short_tmp / "volume"  # what the mounts show: never to be deleted through them
    volume.mkdir()
    (volume / "keep").write_text("keep")
    unpack = d.root / "images/layers/tmp-00112233aabbccdd-0badf00d"  # a crash mid-unpack
    container = d.root / "containers" / secrets.token_hex(32)  # a dir the store lost
    mounts = [unpack / "usr/mnt", container / "upper/volume"]
    for target in mounts:
        target.mkdir(parents=True)
        (target.parent / "other").write_text("x")
    try:
        for target in mounts:
            bind(volume, target)
        d.start()
        assert ready(d)
        counted = recovery_metrics(port)
        for what in ("layer", "container"):
            assert counted[("calyx_recovery_failures_total", what)] >= 1, counted
            assert counted[("calyx_recovery_pending", what)] == 1, counted
        assert "cleanup failed" in d.log() and unpack.name in d.log() and container.name in d.log()
        assert (volume / "keep").read_text() == "keep"
        assert unpack.exists() and container.exists()
    finally:
        for target in mounts:
            unmount(target)
    wait_for(lambda: not unpack.exists() and not container.exists(), "the retries removed the leftovers")

    # each gauge goes down after its own removal, maybe a moment after the dir is gone: wait for both
    def pending() -> list[float]:
        counted = recovery_metrics(port)
        return [counted[("calyx_recovery_pending", what)] for what in ("container", "layer")]

    wait_for(lambda: pending() == [0, 0], "nothing pending")
    assert "cleanup retried and done" in d.log()
    assert (volume / "keep").read_text() == "keep"
    d.restart()
    assert ready(d)


def test_every_kind_of_recovery_cleanup_can_fail_and_the_daemon_still_serves(
    daemon_factory: Callable[..., Daemon],
) -> None:
    port = free_port()
    kinds = ["blob", "layer", "container", "pod", "network", "cgroup"]
    failing = ",".join(f"cleanup.{what}=error" for what in kinds)
    d = daemon_factory({"metrics": {"enabled": True, "port": port}}, env={"CALYX_FAILPOINTS": failing})
    d.stop()
    pod_id = secrets.token_hex(32)
    leftovers = [
        d.root / "images/ingest" / f"{'ab' * 32}.deadbeef",  # an interrupted download
        d.root / "images/layers/tmp-00112233aabbccdd-0badf00d",  # an interrupted unpack
        d.root / "containers" / secrets.token_hex(32),  # a container dir no record owns
        d.run_root / "shm" / pod_id,  # the /dev/shm of a pod removed while the daemon was down
        d.run_root / "ns/net" / pod_id,  # a namespace pin of that pod
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name in ("ingest", "net"):
            path.write_bytes(b"")
        else:
            path.mkdir()
    d.start()
    assert ready(d)
    counted = recovery_metrics(port)
    for what in kinds:  # network: the bridge check; cgroup: the sweep of orphan cgroups
        assert counted.get(("calyx_recovery_failures_total", what), 0) >= 1, (what, counted)
    assert all(os.path.lexists(p) for p in leftovers)
    d.stop()
    d.env.pop("CALYX_FAILPOINTS")
    d.start()
    assert not [p for p in leftovers if os.path.lexists(p)]
    counted = recovery_metrics(port)
    assert not [k for k, v in counted.items() if k[0] == "calyx_recovery_pending" and v], counted
