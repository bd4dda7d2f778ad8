"""Crash recovery: the daemon is killed (SIGKILL) at each internal step of each mutating RPC.

For every failpoint of every mutating RPC: a daemon armed with ``CALYX_FAILPOINTS=<step>=kill`` runs
the RPC until it dies at that step; the test checks the step was reached, starts the daemon again
(unarmed), and audits it (tests/fault_audit.py): every object is either listed and whole, or gone,
and nothing on the machine lacks an owner. Then kubelet's behaviour is replayed (the interrupted
RPC retried, then everything removed) and nothing at all may be left.

Also: conmon killed, the container's init killed, and a CNI plugin that fails or hangs.
Each case has its own daemon, bridge and state dirs, so the audit of one cannot see another's objects.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.container_fixtures import Cx as BaseCx
from tests.fault_audit import audit, leftovers
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import CNI_BIN, Net, free_port, pod_config, run_pod
from tests.reaper import reap

IMAGE = "calyx-test/busybox:latest"
# A container that ends on SIGTERM (as most workloads do) with code 0.
POLITE = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]


class Cx(BaseCx):
    """The container helper, also remembering each pod's config (CreateContainer sends it)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pod_configs: dict[str, pb.PodSandboxConfig] = {}


@dataclass
class Case:
    """One mutating RPC: what to set up before it, how to call it, how kubelet finishes afterwards."""

    rpc: str
    steps: list[str]
    setup: Callable[[Cx, dict[str, str]], None]
    call: Callable[[Cx, dict[str, str]], None]
    finish: Callable[[Cx, dict[str, str]], None] = field(default=lambda cx, ids: None)


def _net_pod(cx: Cx) -> str:
    """A pod on the built-in network (netns, veth, lease) with a hostPort (iptables rules)."""
    parent = f"/cxf-{os.urandom(4).hex()}"
    cx.parents.append(parent)
    config = pod_config(
        log_directory=str(cx.logs),
        port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=free_port())],
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent),
    )
    pod_id = run_pod(cx.daemon, config)
    cx.pods.append(pod_id)
    cx.pod_configs[pod_id] = config
    return pod_id


def _only_net_pod(cx: Cx, ids: dict[str, str]) -> None:
    ids["pod"] = _net_pod(cx)


def _pod_with_container(cx: Cx, ids: dict[str, str]) -> None:
    _only_net_pod(cx, ids)
    cx.image(IMAGE)
    ids["ctr"] = cx.run((ids["pod"], cx.pod_configs[ids["pod"]]), "member", POLITE)


def _host_pod(cx: Cx, ids: dict[str, str]) -> None:
    ids["pod"], config = cx.pod()
    cx.pod_configs[ids["pod"]] = config
    cx.image(IMAGE)


def _created(cx: Cx, ids: dict[str, str]) -> None:
    _host_pod(cx, ids)
    ids["ctr"] = cx.create((ids["pod"], cx.pod_configs[ids["pod"]]), cx.config("victim", POLITE))


def _running(cx: Cx, ids: dict[str, str]) -> None:
    _created(cx, ids)
    cx.start(ids["ctr"])


def _stop_pod(cx: Cx, ids: dict[str, str]) -> None:
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=ids["pod"]), timeout=120)


def _remove_pod(cx: Cx, ids: dict[str, str]) -> None:
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=ids["pod"]), timeout=120)


def _create(cx: Cx, ids: dict[str, str]) -> None:
    cx.create((ids["pod"], cx.pod_configs[ids["pod"]]), cx.config("victim", POLITE))


def _pull(cx: Cx, ids: dict[str, str]) -> None:
    cx.image(IMAGE)


def _remove_image(cx: Cx, ids: dict[str, str]) -> None:
    cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=cx.registry.ref(IMAGE))))


def _pod_cases(setup: Callable[[Cx, dict[str, str]], None]) -> list[Case]:
    """RunPodSandbox, then Stop and Remove of a pod ``setup`` made."""
    return [
        Case(
            "RunPodSandbox",
            ["pod.after_intent", "pod.after_netns", "pod.after_network"],
            lambda cx, ids: None,
            _only_net_pod,
        ),
        Case(
            "StopPodSandbox",
            [
                "pod.stop_after_containers",
                "pod.stop_after_intent",
                "pod.stop_after_network",
                "pod.stop_after_namespaces",
            ],
            setup,
            _stop_pod,
            finish=_stop_pod,
        ),
        Case(
            "RemovePodSandbox",
            ["pod.remove_after_containers", "pod.remove_after_dir"],
            setup,
            _remove_pod,
            finish=_remove_pod,
        ),
    ]


CASES = [
    *_pod_cases(_pod_with_container),
    Case(
        "CreateContainer",
        ["container.after_intent", "container.after_rootfs", "container.after_conmon"],
        _host_pod,
        _create,
        finish=_create,  # the name must be free again
    ),
    Case(
        "StartContainer",
        ["container.before_start", "container.after_start"],
        _created,
        lambda cx, ids: cx.start(ids["ctr"]),
    ),
    Case(
        "StopContainer",
        ["container.stop_after_signal"],
        _running,
        lambda cx, ids: cx.stop(ids["ctr"], 30),
        finish=lambda cx, ids: cx.stop(ids["ctr"], 30),
    ),
    Case(
        "RemoveContainer",
        [
            "container.remove_after_runc_delete",
            "container.remove_after_unmount",
            "container.remove_after_dir",
        ],
        _running,
        lambda cx, ids: cx.remove(ids["ctr"]),
        finish=lambda cx, ids: cx.remove(ids["ctr"]),
    ),
    Case(
        "PullImage",
        ["image.pull_after_manifest", "image.pull_after_blobs", "image.pull_after_unpack"],
        lambda cx, ids: None,
        _pull,
        finish=_pull,
    ),
    Case("RemoveImage", ["image.remove_after_record"], _pull, _remove_image, finish=_remove_image),
]
PARAMS = [pytest.param(case, step, id=step) for case in CASES for step in case.steps]


@pytest.fixture
def make_cx(
    builtin_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
) -> Iterator[Callable[[dict[str, str]], Cx]]:
    made: list[Cx] = []

    def make(env: dict[str, str]) -> Cx:
        net = builtin_net(
            env=env, config={"images": {"registries": {image_registry.host: {"insecure": True}}}}
        )
        logs = short_tmp / f"podlogs{len(made)}"
        logs.mkdir()
        cx = Cx(net, image_registry, logs)
        made.append(cx)
        return cx

    yield make
    for cx in made:
        cx.cleanup()


def _restart_unarmed(cx: Cx) -> None:
    cx.daemon.env.pop("CALYX_FAILPOINTS", None)
    cx.daemon.start()


def _remove_everything_then_nothing_is_left(cx: Cx) -> None:
    """What kubelet does at the end: every pod and image removed; then nothing at all may be left."""
    for pod in cx.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
        _stop_pod(cx, {"pod": pod.id})
        _remove_pod(cx, {"pod": pod.id})
    for image in cx.daemon.images.ListImages(pb.ListImagesRequest(), timeout=30).images:
        cx.daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)), timeout=30)
    assert leftovers(cx) == []


CNI_CASES = _pod_cases(_only_net_pod)


@pytest.mark.parametrize(
    ("case", "step"), [pytest.param(c, s, id=f"cni-{s}") for c in CNI_CASES for s in c.steps]
)
def test_kill9_at_each_pod_step_with_cni(
    cni_net: Callable[..., Net],
    image_registry: LoopbackRegistry,
    short_tmp: Path,
    case: Case,
    step: str,
) -> None:
    """The same for pods on a CNI network (bridge, host-local, portmap): DEL on the way back."""
    net = cni_net(env={"CALYX_FAILPOINTS": f"{step}=kill"})
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, image_registry, logs)
    try:
        _kill_restart_audit(cx, case, step)
    finally:
        cx.cleanup()


@pytest.mark.parametrize(("case", "step"), PARAMS)
def test_kill9_at_each_step_recovers_whole_or_gone(
    make_cx: Callable[[dict[str, str]], Cx], case: Case, step: str
) -> None:
    _kill_restart_audit(make_cx({"CALYX_FAILPOINTS": f"{step}=kill"}), case, step)


def _kill_restart_audit(cx: Cx, case: Case, step: str) -> None:
    ids: dict[str, str] = {}
    case.setup(cx, ids)
    with pytest.raises(grpc.RpcError) as err:
        case.call(cx, ids)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert cx.daemon.proc is not None and cx.daemon.proc.wait(30) == -signal.SIGKILL
    assert f"failpoint={step}" in cx.daemon.log()  # the step was reached, not an earlier crash
    _restart_unarmed(cx)
    assert audit(cx) == []
    case.finish(cx, ids)  # kubelet retries what failed
    assert audit(cx) == []
    _remove_everything_then_nothing_is_left(cx)


def test_restart_without_a_crash_changes_nothing(make_cx: Callable[[dict[str, str]], Cx]) -> None:
    """The audit itself: a daemon with a pod (network, hostPort) and running container is consistent,
    and a plain restart keeps it so."""
    cx = make_cx({})
    ids: dict[str, str] = {}
    _pod_with_container(cx, ids)
    assert audit(cx) == []
    cx.daemon.kill9()
    _restart_unarmed(cx)
    assert audit(cx) == []
    assert cx.status(ids["ctr"]).status.state == pb.CONTAINER_RUNNING
    _remove_everything_then_nothing_is_left(cx)


# --- processes killed under a running daemon --------------------------------------------------------


@pytest.fixture
def running(make_cx: Callable[[dict[str, str]], Cx]) -> tuple[Cx, dict[str, str]]:
    """An unarmed daemon with a running container (``ids["ctr"]``) in a host-network pod."""
    cx = make_cx({})
    ids: dict[str, str] = {}
    _running(cx, ids)
    return cx, ids


def _proc_ids(cx: Cx, cid: str) -> tuple[int, int]:
    info = json.loads(cx.status(cid, verbose=True).info["info"])
    return int(info["pid"]), int(info["monitorPid"])


def test_conmon_killed_container_keeps_running_and_is_stoppable(running: tuple[Cx, dict[str, str]]) -> None:
    cx, ids = running
    _pid, conmon = _proc_ids(cx, ids["ctr"])
    os.kill(conmon, signal.SIGKILL)
    cx.daemon.restart()  # also across a restart: the container is adopted without its monitor
    st = cx.status(ids["ctr"]).status
    assert st.state == pb.CONTAINER_RUNNING
    cx.stop(ids["ctr"], 10)
    st = cx.status(ids["ctr"]).status
    assert st.state == pb.CONTAINER_EXITED
    assert st.exit_code == 255 and "monitor" in st.message  # nobody recorded the real code
    cx.remove(ids["ctr"])
    _remove_everything_then_nothing_is_left(cx)


def test_container_init_killed_is_exited_137_while_the_daemon_is_down(
    running: tuple[Cx, dict[str, str]],
) -> None:
    cx, ids = running
    pid, _conmon = _proc_ids(cx, ids["ctr"])
    cx.daemon.kill9()
    os.kill(pid, signal.SIGKILL)
    _restart_unarmed(cx)
    st = cx.wait_exit(ids["ctr"])
    assert (st.exit_code, st.reason) == (137, "Error")
    assert audit(cx) == []
    # and while it runs: the exit is picked up by the watcher
    second = cx.run((ids["pod"], cx.pod_configs[ids["pod"]]), "second", POLITE)
    os.kill(_proc_ids(cx, second)[0], signal.SIGKILL)
    assert cx.wait_exit(second).exit_code == 137
    _remove_everything_then_nothing_is_left(cx)


# --- CNI plugins that fail or hang ------------------------------------------------------------------

FAULT_PLUGIN = """#!/usr/bin/python3
# A CNI plugin for tests: passes the previous result on, but its ADD fails or hangs on demand.
import json, os, sys, time
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND", "")
here = os.path.dirname(os.path.abspath(sys.argv[0]))
if command == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}))
    sys.exit(0)
mode_file = os.path.join(here, "mode")
mode = open(mode_file).read().strip() if os.path.exists(mode_file) else ""
if command == "ADD" and mode == "fail":
    error = {"cniVersion": conf["cniVersion"], "code": 11, "msg": "cxfault refuses", "details": "on purpose"}
    print(json.dumps(error))
    sys.exit(1)
if command == "ADD" and mode == "hang":
    with open(os.path.join(here, "hanging.pid"), "w") as out:
        out.write(str(os.getpid()))
    while True:
        time.sleep(1)
if command == "ADD":
    print(json.dumps(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}))
"""


def _fault_cni(cni_net: Callable[..., Net], short_tmp: Path, mode: str) -> tuple[Net, Path]:
    bin_dir = short_tmp / "cnibin"
    bin_dir.mkdir()
    plugin = bin_dir / "cxfault"
    plugin.write_text(FAULT_PLUGIN)
    plugin.chmod(0o755)
    (bin_dir / "mode").write_text(mode)
    net = cni_net(start=False, bin_dirs=[str(bin_dir), CNI_BIN])
    conflist_path = next(net.cni_dir.glob("*.conflist"))  # type: ignore[union-attr]
    conflist = json.loads(conflist_path.read_text())
    conflist["plugins"] = [conflist["plugins"][0], {"type": "cxfault"}]  # bridge+host-local, then ours
    conflist_path.write_text(json.dumps(conflist))
    net.daemon.start()
    return net, bin_dir


def _cni_traces(net: Net) -> list[str]:
    found = []
    out = subprocess_out("ip", "-o", "link", "show", "master", net.bridge)
    found += [f"link: {line}" for line in out.splitlines() if line.strip()]
    if net.ipam_dir is not None and net.ipam_dir.is_dir():
        found += [f"ipam lease: {p.name}" for p in net.ipam_dir.iterdir() if p.name[:1].isdigit()]
    found += [f"pin: {p}" for p in (net.daemon.run_root / "ns").glob("*/*")]
    found += [f"pod dir: {p}" for p in (net.daemon.root / "pods").glob("*")]
    listed = net.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
    found += [f"listed: {p.id}" for p in listed]
    return found


def subprocess_out(*argv: str) -> str:
    import subprocess

    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30).stdout


def test_cni_plugin_failing_leaves_nothing(cni_net: Callable[..., Net], short_tmp: Path) -> None:
    net, bin_dir = _fault_cni(cni_net, short_tmp, "fail")
    with pytest.raises(grpc.RpcError) as err:
        run_pod(net.daemon, pod_config())
    assert "cxfault refuses" in err.value.details()
    assert _cni_traces(net) == []
    (bin_dir / "mode").write_text("")
    pod_id = run_pod(net.daemon, pod_config())  # the network itself works
    net.daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    net.daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert _cni_traces(net) == []


def test_cni_plugin_hanging_then_daemon_killed_is_undone_at_restart(
    cni_net: Callable[..., Net], short_tmp: Path
) -> None:
    """kubelet gives up on a RunPodSandbox stuck in a plugin; the runtime is restarted meanwhile."""
    net, bin_dir = _fault_cni(cni_net, short_tmp, "hang")
    try:
        with pytest.raises(grpc.RpcError) as err:
            net.daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config()), timeout=5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        pid_file = bin_dir / "hanging.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the plugin never ran"
            time.sleep(0.05)
        hanging = int(pid_file.read_text())
        assert subprocess_out("ip", "-o", "link", "show", "master", net.bridge).strip()  # bridge ADD happened
        net.daemon.kill9()
        os.kill(hanging, signal.SIGKILL)  # the orphaned plugin: ours to stop (we started its daemon)
        (bin_dir / "mode").write_text("")
        net.daemon.start()
        assert _cni_traces(net) == []
    finally:
        reap(bin_dir)  # the hanging plugin, when the test failed before stopping it


def test_a_container_the_store_lost_is_removed_at_start(running: tuple[Cx, dict[str, str]]) -> None:
    """The store lost its last commits (a power cut with SQLite's synchronous=NORMAL): a container it no
    longer knows is killed and removed at start, from the copy of its record kept beside it."""
    import sqlite3

    cx, ids = running
    pid, conmon = _proc_ids(cx, ids["ctr"])
    cx.daemon.kill9()
    db = sqlite3.connect(cx.daemon.root / "calyx.db")
    with db:
        db.execute("DELETE FROM records WHERE kind = 'container' AND id = ?", (ids["ctr"],))
    db.close()
    _restart_unarmed(cx)
    assert audit(cx) == []
    assert not (cx.daemon.root / "containers" / ids["ctr"]).exists()
    for gone in (pid, conmon):
        stat = Path(f"/proc/{gone}/stat")
        assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"
    _remove_everything_then_nothing_is_left(cx)
