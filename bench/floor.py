"""The floor: ``runc run -d`` of the same busybox container from a prepared bundle, no CRI at all.

The bundle's rootfs is the busybox image's layer unpacked once; the spec is runc's default with the
benchmark's workload, a cgroup under the run's cgroup root and a private runc root. What is timed is
``runc run -d`` (create to running) and then ``runc delete --force``.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

from bench import host
from bench.client import WORKLOAD
from bench.stats import Result

RUNC = "runc"


def version() -> str:
    try:
        out = subprocess.run([RUNC, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.split()[2] if out.returncode == 0 else "?"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def prepare_bundle(bundle: Path, layer_gz: bytes, cgroup_root: str) -> None:
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
    (bundle / "config.json").write_text(json.dumps(spec))


def run_floor(base: Path, layer_gz: bytes, reps: int, cgroup_root: str) -> dict[str, Result]:
    create = Result("runc_run", "ms")
    delete = Result("runc_delete", "ms")
    bundle = base / "bundle"
    root = base / "runc-root"
    try:
        prepare_bundle(bundle, layer_gz, cgroup_root)
        for i in range(reps):
            cid = f"cxbench-floor-{i}"
            argv = [RUNC, "--root", str(root), "run", "-d", "--bundle", str(bundle), cid]
            errors = base / "runc-run.err"
            # The container inherits runc's stdio: give it /dev/null and a file, so that nothing
            # waits for an end of file the container would hold off.
            with open(errors, "wb") as err:
                start = time.perf_counter()
                rc = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=60
                )
                create.samples.append((time.perf_counter() - start) * 1000)
            if rc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)}: {errors.read_text(errors='replace')[-500:]}")
            start = time.perf_counter()
            subprocess.run(
                [RUNC, "--root", str(root), "delete", "--force", cid],
                capture_output=True,
                timeout=60,
                check=True,
            )
            delete.samples.append((time.perf_counter() - start) * 1000)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        for r in (create, delete):
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
    return {"runc_run": create, "runc_delete": delete}
