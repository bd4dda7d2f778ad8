"""Container lifecycle through runc and conmon: exit codes, logs, stop and kill, exec, recovery."""

from __future__ import annotations

import time

import pytest

from calyx_base.errors import AlreadyExists, DeadlineExceeded
from cri.api import api_pb2 as pb
from cri.containers.model import CREATED, EXITED, RUNNING
from tests.containers.harness import Harness
from tests.waiting import wait_for


def wait_state(h: Harness, cid: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while h.containers.exits.get(cid).state != state:
        assert time.monotonic() < deadline, f"container never reached {state}"
        time.sleep(0.05)


def test_exit_code_and_cri_log(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.containers.lifecycle.create(
        pod.id, harness.config_for("c1", ["sh", "-c", "echo hello; echo oops >&2; exit 3"])
    )
    assert harness.containers.exits.get(cid).state == CREATED
    harness.containers.lifecycle.start(cid)
    wait_state(harness, cid, EXITED)
    c = harness.containers.exits.get(cid)
    assert (c.exit_code, c.reason) == (3, "Error")
    assert c.finished_at >= c.started_at > c.created_at
    lines = (harness.logs / "c1.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["stdout F hello", "stderr F oops"]


def test_same_name_same_attempt_is_already_exists(harness: Harness) -> None:
    pod = harness.pod()
    harness.containers.lifecycle.create(pod.id, harness.config_for("dup", ["true"]))
    with pytest.raises(AlreadyExists):
        harness.containers.lifecycle.create(pod.id, harness.config_for("dup", ["true"]))


def test_stop_escalates_to_sigkill_and_is_idempotent(harness: Harness) -> None:
    pod = harness.pod()
    # busybox sh as PID 1 ignores SIGTERM: stop must fall back to SIGKILL after the timeout.
    cid = harness.run(pod, "stubborn", ["sh", "-c", "while true; do sleep 1; done"])
    assert harness.containers.exits.get(cid).state == RUNNING
    harness.containers.lifecycle.stop(cid, 1)
    c = harness.containers.exits.get(cid)
    assert (c.state, c.exit_code) == (EXITED, 137)
    harness.containers.lifecycle.stop(cid, 1)
    harness.containers.lifecycle.remove(cid)
    harness.containers.lifecycle.remove(cid)
    assert not c.path.exists()


def test_stop_signal_ends_a_container_that_handles_it(harness: Harness) -> None:
    pod = harness.pod()
    script = "trap 'exit 42' TERM; touch /tmp/ready; while true; do sleep 0.1; done"
    cid = harness.run(pod, "polite", ["sh", "-c", script])
    # PID 1 ignores a SIGTERM that comes before its trap is set: stop only once the shell says it is
    ready = harness.containers.exits.get(cid).rootfs / "tmp" / "ready"
    wait_for(ready.exists, "the shell to set its trap")
    harness.containers.lifecycle.stop(cid, 30)
    assert harness.containers.exits.get(cid).exit_code == 42


def test_exec_sync_output_exit_code_and_timeout(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "sleeper", ["sleep", "1000"])
    result = harness.containers.execs.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; exit 5"], 10)
    assert (result.exit_code, result.stdout, result.stderr) == (5, b"out\n", b"err\n")
    with pytest.raises(DeadlineExceeded):
        harness.containers.execs.exec_sync(cid, ["sleep", "30"], 1)


def test_restart_adopts_running_containers_and_exits_while_down(harness: Harness) -> None:
    pod = harness.pod()
    keep = harness.run(pod, "keep", ["sleep", "1000"])
    ends = harness.run(pod, "ends", ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; exit 7"])
    ends_c = harness.containers.exits.get(ends)
    mon = harness.containers.monitors.get("runc")
    harness.stop()
    # While no containers subsystem runs, one container exits on its own; conmon records its exit code.
    (ends_c.rootfs / "tmp" / "go").touch()
    deadline = time.monotonic() + 60
    while mon.exit_code(ends) is None:
        assert time.monotonic() < deadline, "container did not exit"
        time.sleep(0.05)
    harness.restart()
    assert harness.containers.exits.get(keep).state == RUNNING
    c = harness.containers.exits.get(ends)
    assert (c.state, c.exit_code, c.reason) == (EXITED, 7, "Error")
    harness.containers.lifecycle.stop(keep, 0)
    assert harness.containers.exits.get(keep).exit_code == 137


def test_oom_kill_is_reported(harness: Harness) -> None:
    pod = harness.pod()
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=32 * 1024 * 1024)
    cid = harness.run(pod, "hog", ["tail", "/dev/zero"], linux=pb.LinuxContainerConfig(resources=resources))
    wait_state(harness, cid, EXITED, timeout=60)
    c = harness.containers.exits.get(cid)
    assert (c.exit_code, c.reason) == (137, "OOMKilled")


def test_exit_is_recorded_without_anyone_asking(harness: Harness) -> None:
    pod = harness.pod()
    cid = harness.run(pod, "quick", ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; exit 4"])
    # it exits once told, after start (whose own look at the exit would otherwise record a quick one),
    # and nothing asks about it afterwards (a lookup picks the exit up too): the watcher must
    rootfs = harness.containers.exits.get(cid).rootfs
    (rootfs / "tmp" / "go").touch()
    deadline = time.monotonic() + 60
    while (harness.store.get("container", cid) or {}).get("state") != EXITED:
        assert time.monotonic() < deadline, "the exit watcher did not record the exit"
        time.sleep(0.05)
    assert harness.store.get("container", cid)["exit_code"] == 4
