"""The test-suite's last check (tests/reaper.py) finds and removes what a dead daemon left running."""

from __future__ import annotations

from pathlib import Path

from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.reaper import reap

cx = container_fixtures.cx


def test_reaper_removes_the_pod_and_container_of_a_killed_daemon(cx: Cx) -> None:
    pod = cx.pod(host_network=False)
    cx.run(pod, "left", ["sleep", "1000"])
    cx.daemon.kill9()
    base = cx.daemon.base
    found = reap(base)
    kinds = {line.split()[0] for line in found}
    assert {"process", "mount", "cgroup"} <= kinds, found
    assert [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(base) in line] == []
    assert reap(base) == []  # nothing left to find
    cx.daemon.start()  # its recovery and the fixture's pod removal take the pod's records and cgroup parent
