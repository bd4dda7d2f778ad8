"""The floor: ``runc run -d`` of the same busybox container from a prepared bundle, no CRI at all.

The bundle's rootfs is the busybox image's layer unpacked once; the spec is runc's default with the
benchmark's workload, a cgroup under the run's cgroup root, a private runc root, and an existing
network namespace joined by path (as a CRI container joins its pod's). What is timed is
``runc run -d`` (create to running) and then ``runc kill KILL`` + ``runc delete --force``; and, as a
second floor, ``runc create`` + ``runc start``: the two calls the CRI's CreateContainer/StartContainer
split asks of any runtime built on runc (containerd's shim makes the same two).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import IO

from bench.client import WORKLOAD
from bench.stats import Result
from tests import host_cleanup as host

RUNC = "runc"


def version() -> str:
    try:
        out = subprocess.run([RUNC, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.split()[2] if out.returncode == 0 else "?"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def run_blocking(argv: list[str], stderr: IO[bytes], timeout: float) -> int:
    """Run ``argv`` and wait for it in a blocking waitpid, a watchdog killing it at ``timeout``.

    subprocess.run(timeout=...) without pipes polls for the exit with sleeps doubling from 1 ms up to
    50 ms (checks at 1, 3, 7, 15, 31, 63 ms...), so a 33 ms runc would be seen at 63 ms: the floor
    would measure Python's backoff.
    """
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    watchdog = threading.Timer(timeout, child.kill)
    watchdog.start()
    try:
        return child.wait()
    finally:
        watchdog.cancel()


def pin_netns(pin: Path) -> None:
    """A network namespace kept by a bind mount on ``pin`` (unmounted with the run's dir)."""
    pin.touch()
    subprocess.run(["unshare", f"--net={pin}", "true"], check=True, capture_output=True, timeout=30)


def prepare_bundle(bundle: Path, layer_gz: bytes, cgroup_root: str, netns: Path) -> None:
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(layer_gz), mode="r:gz") as tar:
        tar.extractall(rootfs)  # our own layer (critest builder): no hostile entries
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True, capture_output=True, timeout=30)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = list(WORKLOAD)
    spec["process"]["terminal"] = False
    spec["root"]["readonly"] = False
    spec["hostname"] = "bench-floor"
    spec["linux"]["cgroupsPath"] = f"{cgroup_root}/floor"
    # A CRI container joins its pod's network namespace, made once per pod: the floor does the same
    # (making and tearing down a network namespace per container would cost it tens of ms here).
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = str(netns)
    (bundle / "config.json").write_text(json.dumps(spec))


def run_floor(base: Path, layer_gz: bytes, reps: int, cgroup_root: str) -> dict[str, Result]:
    create = Result("runc_run", "ms")
    create_start = Result("runc_create_start", "ms")
    delete = Result("runc_kill_delete", "ms")
    bundle = base / "bundle"
    root = base / "runc-root"
    try:
        pin_netns(base / "netns")
        prepare_bundle(bundle, layer_gz, cgroup_root, base / "netns")
        for i in range(reps):
            for timing, steps in ((create, [["run", "-d"]]), (create_start, [["create"], ["start"]])):
                cid = f"cxbench-floor-{steps[0][0]}-{i}"
                timing.samples.append(_timed_runc(root, bundle, cid, steps, base / "runc.err"))
                start = time.perf_counter()
                # SIGKILL first: `delete --force` on a running container kills it and then polls every
                # 100 ms, which would time runc's sleep rather than the work.
                for args in (["kill", cid, "KILL"], ["delete", "--force", cid]):
                    subprocess.run(
                        [RUNC, "--root", str(root), *args], capture_output=True, timeout=60, check=True
                    )
                if timing is create:
                    delete.samples.append((time.perf_counter() - start) * 1000)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        for r in (create, create_start, delete):
            r.status = f"error: {exc}"
            r.samples = []
    finally:
        if root.exists():
            listed = subprocess.run(
                [RUNC, "--root", str(root), "list", "-q"], capture_output=True, timeout=30
            )
            for cid in listed.stdout.decode().split():
                subprocess.run(
                    [RUNC, "--root", str(root), "delete", "--force", cid], capture_output=True, timeout=60
                )
        host.remove_cgroups(cgroup_root.strip("/"))
        host.unmount_under(base)
    return {"runc_run": create, "runc_create_start": create_start, "runc_kill_delete": delete}


def _timed_runc(root: Path, bundle: Path, cid: str, steps: list[list[str]], errors: Path) -> float:
    """Milliseconds for ``steps`` (runc subcommands with their flags) on container ``cid``, in turn.

    The container inherits runc's stdio: it gets /dev/null and a file, so that nothing waits for an
    end of file the container would hold off."""
    with open(errors, "wb") as err:
        start = time.perf_counter()
        for step in steps:
            argv = [RUNC, "--root", str(root), *step]
            argv += ["--bundle", str(bundle), cid] if step[0] != "start" else [cid]
            if run_blocking(argv, err, 60) != 0:
                raise RuntimeError(f"{' '.join(argv)}: {errors.read_text(errors='replace')[-500:]}")
        return (time.perf_counter() - start) * 1000
