"""Run upstream critest (cri-tools' CRI validation suite) against Calyx, offline.

    python -m critest.run [--critest PATH] [--focus REGEX] [--skip REGEX] [--parallel N] [--keep]

Where a ``critest`` binary is installed (it is not a Debian package: take it from a cri-tools release),
this starts a local registry (Debian's docker-registry on loopback) holding the test images
(critest/images.py), a Calyx daemon with the registry-mirror drop-in (``mirror-config``) and a
built-in network on a bridge of its own, all in a private temp dir; runs critest against Calyx's
socket; prints the summary and which failures are expected offline (critest/expected-failures.md);
then removes every pod and image, stops Calyx and the registry and restores the host.

Exit status: 0 when critest passed or every failure is an expected one, 1 otherwise, and 0 with a
message when no critest binary is installed (nothing to run is not a failure of Calyx).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXPECTED = HERE / "expected-failures.md"
BRIDGE = "cxcrit0"
SUBNET = "10.248.0.0/24"
# critest's HostIpc specs (see expected-failures.md) leave SysV segments on the host; fine to run.
DEFAULT_SKIP = ""


@dataclass
class Summary:
    ran: str = ""
    result: str = ""
    failures: list[str] = field(default_factory=list)


def find_critest(explicit: str | None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("critest")


def expected_failures(path: Path = EXPECTED) -> list[str]:
    """Spec names of the "## Expected failures" section: the `backquoted` start of each ``- `` line."""
    names = []
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        match = re.match(r"\s*-\s+`([^`]+)`", line)
        if match and section == "expected failures":
            names.append(match.group(1))
    return names


def parse_summary(output: str) -> Summary:
    """Ginkgo's closing lines: "Ran N of M Specs ...", "SUCCESS!/FAIL! -- ...", and "[FAIL] ..." lines."""
    summary = Summary()
    for line in output.splitlines():
        text = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if text.startswith("Ran ") and " Specs" in text:
            summary.ran = text
        elif text.startswith(("SUCCESS!", "FAIL!")):
            summary.result = text
        elif text.startswith("[FAIL]") and text not in summary.failures:
            summary.failures.append(text)
    return summary


def unexpected(summary: Summary, expected: list[str]) -> list[str]:
    return [f for f in summary.failures if not any(name in f for name in expected)]


# --- the environment critest runs against ------------------------------------------------------------


def _wait_ready(socket: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    import grpc

    from cri.api import api_pb2 as pb
    from cri.api import api_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"calyx exited with {proc.returncode}; its log:\n{log.read_text()[-4000:]}")
        if socket.exists():
            with grpc.insecure_channel(f"unix:{socket}") as channel:
                try:
                    status = pb_grpc.RuntimeServiceStub(channel).Status(pb.StatusRequest(), timeout=2)
                    if any(c.type == "RuntimeReady" and c.status for c in status.status.conditions):
                        return
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    raise SystemExit(f"calyx not ready after {timeout:g}s; its log:\n{log.read_text()[-4000:]}")


def _remove_everything(socket: Path) -> None:
    import grpc

    from cri.api import api_pb2 as pb
    from cri.api import api_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"unix:{socket}") as channel:
        rt, images = pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)
        with contextlib.suppress(grpc.RpcError):
            for pod in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
                with contextlib.suppress(grpc.RpcError):
                    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
                    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=120)
            for image in images.ListImages(pb.ListImagesRequest(), timeout=30).images:
                with contextlib.suppress(grpc.RpcError):
                    images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)), timeout=60)


@contextlib.contextmanager
def environment(work: Path) -> Iterator[Path]:
    """Registry with the test images + Calyx with the mirror drop-in; yields Calyx's socket."""
    import tomli_w

    from critest.images import calyx_images, critest_images, mirror_config, push_all
    from tests.registry import Registry

    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    storage = work / "registry"
    storage.mkdir()
    registry = Registry(work, storage).start()
    proc: subprocess.Popen[bytes] | None = None
    socket = work / "calyx.sock"
    try:
        print(f"pushing the test images to {registry.host} ...", flush=True)
        push_all(registry.host, calyx_images() + critest_images())
        config_dir = work / "calyx.d"
        config_dir.mkdir()
        (work / "no-cni").mkdir()  # an empty CNI dir: the built-in network on a bridge of our own
        (config_dir / "50-mirrors.toml").write_text(mirror_config(registry.host))
        config = {
            "server": {"socket": str(socket)},
            "state": {"root": str(work / "lib"), "run_root": str(work / "run")},
            "network": {"bridge": BRIDGE, "subnet": SUBNET, "cni_conf_dir": str(work / "no-cni")},
            "metrics": {"enabled": False},
        }
        (work / "calyx.toml").write_text(tomli_w.dumps(config))
        log = work / "calyx.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cri.cli", "serve", "--config", str(work / "calyx.toml"),
                 "--config-dir", str(config_dir)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
            )  # fmt: skip
        _wait_ready(socket, proc, log)
        print(f"calyx ready on {socket} (log {log})", flush=True)
        yield socket
    finally:
        if proc is not None and proc.poll() is None:
            _remove_everything(socket)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        registry.stop()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)


def run_critest(binary: str, socket: Path, args: argparse.Namespace, report: Path) -> tuple[int, str]:
    argv = [
        binary,
        f"--runtime-endpoint=unix://{socket}",
        f"--image-endpoint=unix://{socket}",
        f"--parallel={args.parallel}",
        "--ginkgo.no-color",
    ]
    if args.focus:
        argv.append(f"--ginkgo.focus={args.focus}")
    if args.skip:
        argv.append(f"--ginkgo.skip={args.skip}")
    print("running:", " ".join(argv), flush=True)
    chunks: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            if args.verbose:
                print(line, end="")
    output = "".join(chunks)
    report.write_text(output)
    return proc.returncode, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m critest.run", description=__doc__.split("\n")[0])
    parser.add_argument("--critest", help="path of the critest binary (default: critest on PATH)")
    parser.add_argument("--focus", default="", help="only specs matching this regex (ginkgo.focus)")
    parser.add_argument("--skip", default=DEFAULT_SKIP, help="skip specs matching this regex (ginkgo.skip)")
    parser.add_argument("--parallel", type=int, default=2, help="critest's parallel ginkgo processes")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, report)")
    parser.add_argument("--verbose", action="store_true", help="stream critest's output")
    args = parser.parse_args(argv)

    binary = find_critest(args.critest)
    if binary is None:
        where = args.critest or "PATH"
        print(
            f"critest is not installed (not found on {where}); nothing to run.\n"
            "critest is not a Debian package: install it from a cri-tools release "
            "(critest-<version>-linux-amd64.tar.gz) into /usr/local/bin, then run this again.\n"
            f"Specs expected to fail offline: {EXPECTED}"
        )
        return 0
    if os.geteuid() != 0:
        print("critest against Calyx needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="calyx-critest-", dir="/tmp"))
    try:
        with environment(work) as socket:
            code, output = run_critest(binary, socket, args, work / "critest.out")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = parse_summary(output)
    expected = expected_failures()
    surprises = unexpected(summary, expected)
    print("\n== critest summary ==")
    print(summary.ran or "(no 'Ran N of M Specs' line)")
    print(summary.result or f"(no result line; critest exited {code})")
    for failure in summary.failures:
        print(("  expected: " if failure not in surprises else "  FAILED:   ") + failure)
    if args.keep:
        print(f"work dir kept: {work} (critest.out, calyx.log)")
    if code == 0:
        return 0
    if summary.failures and not surprises:
        print("every failure is listed in critest/expected-failures.md")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
