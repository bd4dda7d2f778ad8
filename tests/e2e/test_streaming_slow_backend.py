"""A streaming session whose call into the daemon is slow (a busy runc, a container lock held by a long
StopContainer) holds up no other client of the streaming server, and a client that hangs up meanwhile
leaves nothing behind. Real daemon, real runc; the slowness is the daemon's failpoint after an exec's
``runc exec`` was spawned (``streaming.exec_after_spawn``), armed ``wait-first`` so that only the first
exec is held there, until the test lets it go.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cri import statedirs
from cri.api import api_pb2 as pb
from tests.e2e.test_streaming import Env, _env, processes_with_cmdline
from tests.streaming_clients import spdy
from tests.waiting import wait_for

STEP = "streaming.exec_after_spawn"


@dataclass
class Slow:
    env: Env
    held: Path

    def reached(self) -> bool:
        return (self.held / f"{STEP}.reached").exists()

    def release(self) -> None:
        (self.held / f"{STEP}.go").touch()


@pytest.fixture
def slow(builtin_net, image_registry, short_tmp) -> Iterator[Slow]:
    held = short_tmp / "held"
    held.mkdir()
    failpoint = {"CALYX_FAILPOINTS": f"{STEP}=wait-first:{held}"}
    slow = Slow(_env(builtin_net, image_registry, short_tmp, daemon_env=failpoint), held)
    try:
        yield slow
    finally:
        slow.release()  # whatever happened, the daemon's held call goes on before the daemon stops


def daemon_pid(env: Env) -> int:
    assert env.daemon.proc is not None
    return env.daemon.proc.pid


def daemon_fds(env: Env) -> Counter[str]:
    """The daemon's descriptors of the kinds an exec session holds: pidfds, pipes, pseudo-terminals."""
    pid = daemon_pid(env)
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "pidfd" in target:
            kinds["pidfd"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target == "/dev/ptmx" or target.startswith("/dev/pts/"):
            kinds["pty"] += 1
    return kinds


def daemon_children(env: Env) -> list[str]:
    """The command names of the daemon's children, zombies included (not yet reaped)."""
    pid = daemon_pid(env)
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError):
                names.append(Path(f"/proc/{child}/comm").read_text().strip())
    return names


def container_processes(init_pid: int) -> set[int]:
    """Every process in the container's cgroup (its pids controller's, or the unified one on cgroup v2)."""
    paths = {}
    for line in Path(f"/proc/{init_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path.lstrip("/")
    v1 = "pids" in paths
    cgroup = Path("/sys/fs/cgroup/pids", paths["pids"]) if v1 else Path("/sys/fs/cgroup", paths[""])
    return {int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()}


def init_pid(env: Env, cid: str) -> int:
    status = env.daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True))
    return int(json.loads(status.info["info"])["pid"])


def test_a_held_exec_start_holds_up_no_other_session(slow: Slow) -> None:
    """While the first exec's backend call is held, a second exec and a port-forward on the same server run
    to their end (on the old code the server's loop itself was held: no other handshake was answered)."""
    env = slow.env
    cid = env.container(["sleep", "3600"])
    env.container(
        ["sh", "-c", "mkdir /srv && echo hello-from-pod > /srv/index.html && exec httpd -f -p 80 -h /srv"],
        image="calyx-test/web:latest",
    )
    first, held = spdy(env.exec_url(cid, ["echo", "first"]), ("error", "stdout"))
    try:
        wait_for(slow.reached, "the first exec held after its spawn")

        second, s = spdy(env.exec_url(cid, ["echo", "second"]), ("error", "stdout"))
        assert s["stdout"].read_all() == b"second\n"
        assert json.loads(s["error"].read_all())["status"] == "Success"
        second.close()
        wait_for(
            lambda: env.fetch_via_portforward(80).endswith(b"hello-from-pod\n"),
            "httpd answers through a port-forward",
        )

        # Both ended while the first was still held: its session has had nothing yet.
        assert not (slow.held / f"{STEP}.go").exists()
        assert held["stdout"].chunks.empty() and held["error"].chunks.empty()
        assert not first.closed.is_set()
    finally:
        slow.release()
    assert held["stdout"].read_all() == b"first\n"
    assert json.loads(held["error"].read_all())["status"] == "Success"
    first.close()


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
def test_a_client_gone_during_a_held_exec_start_leaves_nothing_behind(slow: Slow, tty: bool) -> None:
    """The client hangs up while its exec's backend call is held: the session ends at once, and once the
    call returns, what it started is killed and reaped: no process in the container, no runc child of
    the daemon, no descriptor held, no process spec or pid file left in the container's exec dir."""
    env = slow.env
    cid = env.container(["sleep", "3600"])
    init = init_pid(env, cid)
    before = daemon_fds(env)
    seconds = str(200000 + int.from_bytes(os.urandom(3), "big"))
    wanted = f"sleep\0{seconds}\0".encode()
    streams = ("error", "stdin", "stdout", "resize") if tty else ("error", "stdout")
    url = env.exec_url(cid, ["sleep", seconds], tty=tty, stdin=tty)
    client, _ = spdy(url, streams)
    try:
        wait_for(slow.reached, "the exec held after its spawn")
        pids = wait_for(lambda: processes_with_cmdline(wanted), "the exec'd process running")
        assert set(pids) <= container_processes(init)
        assert "runc" in daemon_children(env)
        assert daemon_fds(env)["pidfd"] > before["pidfd"]

        client.close()
        wait_for(
            lambda: "client went away while its exec was starting" in env.daemon.log(),
            "the session to end while its exec is still held",
        )
        assert processes_with_cmdline(wanted), "nothing is killed while the call is held"
    finally:
        slow.release()

    wait_for(lambda: not processes_with_cmdline(wanted), "the exec'd process killed")
    wait_for(lambda: container_processes(init) == {init}, "only the container's own process left in it")
    wait_for(lambda: "runc" not in daemon_children(env), "runc exec reaped by the daemon")
    wait_for(
        lambda: all(daemon_fds(env)[kind] <= before[kind] for kind in ("pidfd", "pipe", "pty")),
        "the session's descriptors closed",
    )
    exec_dir = env.daemon.root / statedirs.CONTAINERS / cid / statedirs.EXEC_DIR
    assert exec_dir.is_dir()
    wait_for(lambda: not any(exec_dir.iterdir()), "the exec's process spec and pid file removed")
