"""A create that fails or dies half-way leaves nothing behind: no record, mount, runc state or conmon."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import cgroup_files
from tests.container_fixtures import Cx
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net


def make_cx(factory: Callable[..., Net], registry: LoopbackRegistry, base: Path, env: dict[str, str]) -> Cx:
    net = factory(env=env, config={"images": {"registries": {registry.host: {"insecure": True}}}})
    logs = base / "podlogs"
    logs.mkdir(exist_ok=True)
    return Cx(net, registry, logs)


def traces(cx: Cx) -> dict[str, object]:
    """Everything a container could leave behind, for this daemon's state dirs."""
    runc = subprocess.run(
        ["runc", "--root", str(cx.daemon.run_root / "runc"), "list", "-q"], capture_output=True, text=True
    ).stdout.split()
    mounts = [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(cx.daemon.root) in line
    ]
    conmons = subprocess.run(
        ["pgrep", "-f", f"conmon.*{cx.daemon.root}"], capture_output=True, text=True
    ).stdout.split()
    containers_dir = cx.daemon.root / "containers"
    dirs = sorted(p.name for p in containers_dir.iterdir()) if containers_dir.exists() else []
    listed = [c.id for c in cx.rt.ListContainers(pb.ListContainersRequest()).containers]
    return {"runc": runc, "mounts": mounts, "conmon": conmons, "dirs": dirs, "listed": listed}


CLEAN = {"runc": [], "mounts": [], "conmon": [], "dirs": [], "listed": []}


@pytest.mark.parametrize("failpoint", ["container.after_rootfs", "container.after_conmon"])
def test_daemon_killed_mid_create_is_cleaned_on_restart(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
    failpoint: str,
) -> None:
    cx = make_cx(builtin_net, image_registry, short_tmp, {"CALYX_FAILPOINTS": f"{failpoint}=kill"})
    try:
        pod = cx.pod()
        config = cx.config("victim", ["sleep", "1000"])
        with pytest.raises(grpc.RpcError) as err:
            cx.create(pod, config)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cx.daemon.proc is not None and cx.daemon.proc.wait(60) == -9
        cx.daemon.env.pop("CALYX_FAILPOINTS")
        cx.daemon.start()
        assert traces(cx) == CLEAN
        # the name is free again
        cx.start(cx.create(pod, config))
    finally:
        cx.cleanup()


def test_create_failing_half_way_undoes_its_steps(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> None:
    cx = make_cx(builtin_net, image_registry, short_tmp, {"CALYX_FAILPOINTS": "container.after_conmon=error"})
    try:
        pod = cx.pod()
        config = cx.config("victim", ["sleep", "1000"])
        with pytest.raises(grpc.RpcError) as err:
            cx.create(pod, config)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert traces(cx) == CLEAN
        assert list((cx.daemon.run_root / "exits").iterdir()) == []
    finally:
        cx.cleanup()


def test_remove_of_a_created_container_and_stop_after_restart(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> None:
    cx = make_cx(builtin_net, image_registry, short_tmp, {})
    try:
        pod = cx.pod()
        created = cx.create(pod, cx.config("created", ["sleep", "1000"]))
        running = cx.run(pod, "running", ["sleep", "1000"])
        cx.daemon.restart()
        assert cx.status(created).status.state == pb.CONTAINER_CREATED
        cx.remove(created)
        cx.stop(running, 1)
        assert cx.status(running).status.exit_code == 137
        cx.remove(running)
        assert traces(cx) == CLEAN
    finally:
        cx.cleanup()


def test_daemon_killed_right_after_runc_start_finds_the_container_running(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> None:
    cx = make_cx(builtin_net, image_registry, short_tmp, {"CALYX_FAILPOINTS": "container.after_start=kill"})
    try:
        pod = cx.pod()
        cid = cx.create(pod, cx.config("started", ["sleep", "1000"]))
        with pytest.raises(grpc.RpcError):
            cx.start(cid)
        cx.daemon.env.pop("CALYX_FAILPOINTS")
        cx.daemon.start()
        st = cx.status(cid).status
        assert st.state == pb.CONTAINER_RUNNING and st.started_at > 0
        assert cx.output(cid, "echo", "ok") == "ok\n"
        cx.stop(cid, 0)
        assert cx.status(cid).status.exit_code == 137
    finally:
        cx.cleanup()


def _cgroup_dirs(parent: str, name: str) -> list[Path]:
    return [d for top in cgroup_files.dirs(parent) for d in top.glob(name) if d.is_dir()]


def test_restart_removes_container_cgroups_no_record_owns_and_keeps_foreign_ones(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> None:
    """cgroupfs: after a restart, ``calyx-<id>`` cgroups below our parents whose container the store does
    not know are removed (what runs there killed) when they are ours: an empty leftover, or a container
    whose conmon reports to our exit dir (record and dir lost). A populated one of another runtime stays."""
    import secrets
    import sqlite3

    cx = make_cx(builtin_net, image_registry, short_tmp, {})
    foreign: subprocess.Popen[bytes] | None = None
    parent = ""
    try:
        pod = cx.pod()
        parent = cx.parents[-1]
        lost = cx.run(pod, "lost", ["sleep", "1000"])
        conmon_pid = int((cx.daemon.root / "containers" / lost / "conmon.pid").read_text())
        leftover, other = secrets.token_hex(32), secrets.token_hex(32)
        for controller in ("memory", "pids", "cpu"):
            cgroup_files.controller_dir(controller, f"{parent}/calyx-{leftover}").mkdir(exist_ok=True)
        foreign_dir = cgroup_files.controller_dir("pids", f"{parent}/calyx-{other}")
        foreign_dir.mkdir()
        foreign = subprocess.Popen(["sleep", "1000"])
        (foreign_dir / "cgroup.procs").write_text(str(foreign.pid))

        cx.daemon.kill9()
        db = sqlite3.connect(cx.daemon.root / "calyx.db")
        with db:
            db.execute("DELETE FROM records WHERE kind = 'container' AND id = ?", (lost,))
        db.close()
        bundle = cx.daemon.root / "containers" / lost
        subprocess.run(["umount", str(bundle / "rootfs")], check=True)
        subprocess.run(["rm", "-rf", str(bundle)], check=True)
        cx.daemon.start()

        assert cx.rt.ListContainers(pb.ListContainersRequest()).containers == []
        assert _cgroup_dirs(parent, f"calyx-{lost}") == []
        assert _cgroup_dirs(parent, f"calyx-conmon-{lost}") == []
        assert _cgroup_dirs(parent, f"calyx-{leftover}") == []
        assert lost not in traces(cx)["runc"]
        assert (
            not Path(f"/proc/{conmon_pid}").exists()
            or b"conmon" not in Path(f"/proc/{conmon_pid}/cmdline").read_bytes()
        )
        assert foreign.poll() is None and foreign_dir.is_dir(), "another runtime's container was touched"
        assert "container cgroup of another runtime kept" in cx.daemon.log()
    finally:
        if foreign is not None:
            foreign.kill()
            foreign.wait(10)
            for d in _cgroup_dirs(parent, "calyx-*") if parent else []:
                if d.name.startswith("calyx-") and not (d / "cgroup.procs").read_text().strip():
                    d.rmdir()
        cx.cleanup()
