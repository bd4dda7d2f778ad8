"""python -m critest.run leaves nothing behind however the run ends: SIGTERM in the middle, or Calyx and
critest both dying. A stand-in for critest (given with --critest) does what critest's specs do to the
host: a pod with a running container through the CRI, a SysV shared-memory segment as the HostIpc
specs' ``ipcmk``, a mount and a bind mount of a host dir below its temp dir as the mount-propagation
specs; then it hangs, or kills Calyx and itself."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import cgroup_files
from tests.reaper import _mounts_under
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

STAND_IN = """
import ctypes, os, signal, subprocess, sys, time
sys.path.insert(0, {repo!r})
import grpc
from cri.api import api_pb2 as pb, api_pb2_grpc as pb_grpc

socket = next(a for a in sys.argv if a.startswith("--runtime-endpoint=")).split("unix://", 1)[1]
channel = grpc.insecure_channel("unix:" + socket)
rt, images = pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)
image = pb.ImageSpec(image="registry.k8s.io/e2e-test-images/busybox:1.29-2")
images.PullImage(pb.PullImageRequest(image=image), timeout=120)
meta = pb.PodSandboxMetadata(name="stand-in", uid="stand-in-uid", namespace="critest")
pod_config = pb.PodSandboxConfig(metadata=meta)
pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config), timeout=120).pod_sandbox_id
name = pb.ContainerMetadata(name="sleeper")
config = pb.ContainerConfig(metadata=name, image=image, command=["sleep", "3600"])
request = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=pod_config)
cid = rt.CreateContainer(request, timeout=120).container_id
rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)

libc = ctypes.CDLL(None, use_errno=True)
assert libc.shmget({key}, 1 << 20, 0o1644) >= 0, "shmget"  # IPC_CREAT | 0644, as ipcmk -M
tmp = os.environ["TMPDIR"]
os.makedirs(tmp + "/tmpfs"); os.makedirs(tmp + "/bind")
subprocess.run(["mount", "-t", "tmpfs", "none", tmp + "/tmpfs"], check=True)
subprocess.run(["mount", "--bind", {host_dir!r}, tmp + "/bind"], check=True)
open({ready!r}, "w").write("ready")
if {mode!r} == "hang":
    time.sleep(3600)
for pid in os.listdir("/proc"):  # Calyx dies: the daemon serving this socket
    try:
        cmdline = open(f"/proc/{{pid}}/cmdline", "rb").read()
    except OSError:
        continue
    if b"cri.cli" in cmdline and os.path.dirname(socket).encode() in cmdline:
        os.kill(int(pid), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)  # and so does critest, without a summary
"""


def host_shm_keys() -> set[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines}


def stand_in(tmp: Path, mode: str) -> tuple[Path, Path, Path, int]:
    key = random.randint(1 << 20, 1 << 30)
    host_dir = tmp / "host-dir"
    host_dir.mkdir()
    (host_dir / "sentinel").write_text("must survive the run's cleanup")
    ready = tmp / "ready"
    script = tmp / "critest"
    body = STAND_IN.format(repo=str(REPO), key=key, host_dir=str(host_dir), ready=str(ready), mode=mode)
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script, ready, host_dir, key


def run_runner(script: Path, ready: Path, terminate: bool) -> tuple[int, str]:
    out = script.parent / "runner.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "critest.run", "--critest", str(script)],
            stdout=sink, stderr=subprocess.STDOUT, cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "CRITEST"},
        )  # fmt: skip
        try:
            if terminate:
                wait_for(lambda: ready.exists() or proc.poll() is not None, "the stand-in is ready", 300)
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    return code, out.read_text()


def assert_nothing_left(output: str, host_dir: Path, key: int) -> None:
    found = re.search(r"calyx ready on (\S+)/calyx/calyx\.sock \(bridge (\S+), cgroup /(\S+),", output)
    assert found, output
    assert "left on the host by Calyx" not in output  # the CRI removal (after a restart) did it all
    work, bridge, cgroup = Path(found[1]), found[2], found[3]
    assert not work.exists(), f"{work} is left"
    assert not _mounts_under(work), _mounts_under(work)
    assert not Path(f"/sys/class/net/{bridge}").exists(), f"bridge {bridge} is left"
    assert cgroup_files.dirs(cgroup) == [], f"cgroup {cgroup} is left"
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(work).encode() in (entry / "cmdline").read_bytes():
                left.append(entry.name)
        except OSError:
            continue
    assert left == [], f"processes of the run are left: {left}"
    assert key not in host_shm_keys(), "the stand-in's SysV segment is on the host"
    assert (host_dir / "sentinel").exists(), "deleting the work dir went through a bind mount"


@pytest.fixture
def tmp(short_tmp: Path) -> Path:
    short_tmp.chmod(0o755)
    return short_tmp


def test_sigterm_midway_removes_everything(tmp: Path) -> None:
    script, ready, host_dir, key = stand_in(tmp, "hang")
    code, output = run_runner(script, ready, terminate=True)
    assert ready.exists(), output
    assert code == 130, output
    assert "interrupted" in output
    assert_nothing_left(output, host_dir, key)


def test_calyx_and_critest_dying_midway_fail_the_run_and_leave_nothing(tmp: Path) -> None:
    script, ready, host_dir, key = stand_in(tmp, "die")
    code, output = run_runner(script, ready, terminate=False)
    assert ready.exists(), output
    assert code == 1, output
    assert "without its summary" in output and "calyx died during the run" in output
    assert_nothing_left(output, host_dir, key)


def test_the_run_has_an_ipc_namespace_of_its_own() -> None:
    """What lets the SysV segments go with the run: critest and Calyx share one, not the host's."""
    code = (
        "from critest import harness as h; h.private_ipc_namespace(); "
        "print(h.os.readlink('/proc/self/ns/ipc'))"
    )
    inside = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert inside.stdout.strip().startswith("ipc:[")
    assert inside.stdout.strip() != os.readlink("/proc/self/ns/ipc")
