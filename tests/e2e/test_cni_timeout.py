"""network.cni_plugin_timeout_seconds: a CNI plugin that hangs is killed, with every process it started,
and RunPodSandbox fails naming the plugin and the pod, leaving nothing behind (tests/fault_audit.py).

The plugin used here comes after Debian's bridge plugin (bridge + host-local), so the bridge's veth,
address lease and iptables rules exist when it hangs: the undo must DEL them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.container_fixtures import Cx
from tests.fault_audit import audit, leftovers
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import CNI_BIN, Net, pod_config, run_pod, stop_remove
from tests.reaper import reap

TIMEOUT_S = 10  # long enough for the bridge plugin (its iptables waits for the xtables lock) and a python
# plugin to start on a loaded machine; each hang costs the test this long

# A plugin that, for the command named in its "hang" file (ADD or DEL), starts a helper in a session of
# its own (so outside the plugin's process group) that starts a grandchild, records the three pids and
# waits forever. Otherwise it passes the previous result on.
HANGING_PLUGIN = """#!/usr/bin/python3
import json, os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(sys.argv[0]))
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND", "")
hang_file = os.path.join(here, "hang")
hang = os.path.exists(hang_file) and open(hang_file).read().strip() == command
if hang:
    helper = subprocess.Popen(
        ["sh", "-c", "sleep 1000 & echo $! > " + os.path.join(here, "grandchild.pid") + "; wait"],
        start_new_session=True,
    )
    with open(os.path.join(here, "tree.pid.tmp"), "w") as out:
        out.write(f"{os.getpid()} {helper.pid}")
    os.rename(os.path.join(here, "tree.pid.tmp"), os.path.join(here, "tree.pid"))
    while True:
        time.sleep(1)
if command == "ADD":
    print(json.dumps(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}))
"""


def _hanging_cni(cni_net: Callable[..., Net], short_tmp: Path) -> tuple[Net, Path]:
    bin_dir = short_tmp / "hangbin"
    bin_dir.mkdir()
    plugin = bin_dir / "cxhang"
    plugin.write_text(HANGING_PLUGIN)
    plugin.chmod(0o755)
    (bin_dir / "hang").write_text("ADD")
    net = cni_net(start=False, bin_dirs=[str(bin_dir), CNI_BIN])
    conflist_path = next(net.cni_dir.glob("*.conflist"))  # type: ignore[union-attr]
    conflist = json.loads(conflist_path.read_text())
    conflist["plugins"] = [conflist["plugins"][0], {"type": "cxhang"}]
    conflist_path.write_text(json.dumps(conflist))
    dropin = net.daemon.base / "calyx.d"
    dropin.mkdir(exist_ok=True)
    (dropin / "50-cni-timeout.toml").write_text(f"[network]\ncni_plugin_timeout_seconds = {TIMEOUT_S}\n")
    net.daemon.start()
    return net, bin_dir


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet (it runs nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pids: list[int]) -> list[int]:
    """Pids still running once they had 60 s to die (SIGKILL takes effect at once; this is slack)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not _gone(p)]


def _tree(bin_dir: Path) -> list[int]:
    """The hanging plugin's pid, its helper's and its grandchild's (the files are consumed)."""
    plugin, helper = map(int, (bin_dir / "tree.pid").read_text().split())
    grandchild = int((bin_dir / "grandchild.pid").read_text())
    (bin_dir / "tree.pid").unlink()
    return [plugin, helper, grandchild]


def test_hanging_plugin_is_killed_with_its_tree_and_the_pod_leaves_nothing(
    cni_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    net, bin_dir = _hanging_cni(cni_net, short_tmp)
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, image_registry, logs)
    config = pod_config(name="hangs")
    try:
        with pytest.raises(grpc.RpcError) as err:
            net.daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120)
        details = err.value.details()
        assert err.value.code() == grpc.StatusCode.INTERNAL, details
        assert "cxhang ADD" in details and f"within {TIMEOUT_S}s" in details, details
        assert f"{config.metadata.namespace}/hangs" in details, details

        assert _wait_gone(_tree(bin_dir)) == []

        assert net.records("pod") == {}
        assert audit(cx) == []
        assert leftovers(cx) == []
        assert "cxhang" in net.daemon.log() and "hangs" in net.daemon.log()

        (bin_dir / "hang").unlink()  # the same network works once the plugin answers
        pod_id = run_pod(net.daemon, pod_config(name="answers"))
        stop_remove(net.daemon, pod_id)
        assert leftovers(cx) == []
    finally:
        cx.cleanup()
        reap(bin_dir)  # a plugin tree the daemon failed to kill (the test then failed on it)


def test_hanging_del_fails_the_stop_naming_plugin_and_pod_and_a_retry_finishes(
    cni_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    net, bin_dir = _hanging_cni(cni_net, short_tmp)
    (bin_dir / "hang").write_text("DEL")
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, image_registry, logs)
    try:
        pod_id = run_pod(net.daemon, pod_config(name="stuck-del"))
        stop = pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)
        with pytest.raises(grpc.RpcError) as err:
            net.daemon.runtime.StopPodSandbox(stop, timeout=120)
        details = err.value.details()
        assert "cxhang DEL" in details and "/stuck-del" in details and pod_id in details, details
        assert _wait_gone(_tree(bin_dir)) == []

        (bin_dir / "hang").unlink()
        net.daemon.runtime.StopPodSandbox(stop, timeout=120)  # kubelet's retry
        net.daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        assert net.records("pod") == {}
        assert leftovers(cx) == []
    finally:
        cx.cleanup()
        reap(bin_dir)  # a plugin tree the daemon failed to kill (the test then failed on it)


def _dels_done(net: Net, pod_id: str) -> int:
    """CNI DELs of the pod that went through every plugin (the daemon logs each)."""
    return sum(1 for line in net.daemon.log().splitlines() if 'msg="cni del"' in line and pod_id in line)


def test_a_del_still_failing_at_restart_is_retried_later_not_forgotten(
    cni_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    """Recovery's teardown of a stopped pod fails too (the plugin still hangs): the pod keeps what says a
    DEL is due, so kubelet's later StopPodSandbox runs it instead of finding nothing left to do."""
    net, bin_dir = _hanging_cni(cni_net, short_tmp)
    (bin_dir / "hang").write_text("DEL")
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, image_registry, logs)
    try:
        pod_id = run_pod(net.daemon, pod_config(name="del-at-restart"))
        stop = pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)
        with pytest.raises(grpc.RpcError):
            net.daemon.runtime.StopPodSandbox(stop, timeout=120)
        assert _wait_gone(_tree(bin_dir)) == []

        net.daemon.stop()
        net.daemon.start()  # recovery's DEL hangs and is killed as well
        assert _wait_gone(_tree(bin_dir)) == []
        status = net.daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        assert status.status.state == pb.SANDBOX_NOTREADY
        assert _dels_done(net, pod_id) == 0  # every DEL so far failed

        (bin_dir / "hang").unlink()
        net.daemon.runtime.StopPodSandbox(stop, timeout=120)  # kubelet's retry runs the DEL
        assert _dels_done(net, pod_id) == 1  # by the stop itself, not only later by a removal
        net.daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        assert net.records("pod") == {}
        assert leftovers(cx) == []
    finally:
        cx.cleanup()
        reap(bin_dir)  # a plugin tree the daemon failed to kill (the test then failed on it)
