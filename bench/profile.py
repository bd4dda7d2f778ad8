"""Sampling profile of the Calyx daemon while the benchmarks drive it (py-spy, from PyPI).

``python -m bench --profile`` records the daemon's Python stacks (idle threads included, so time
spent waiting on runc, conmon or a CNI plugin shows as the call that waits), then ranks the
functions of Calyx's own code by the share of samples they appear in.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

OUR_CODE = re.compile(r"(^|/)(cri|sandbox|metrics)/[^/]")
# Stacks serving a request: a gRPC call, or an HTTP GET (the Prometheus exporter). The rest are
# threads waiting for work (the main thread, servers' accept loops), left out of the ranking.
REQUEST_FRAMES = ("_call_behavior (", "do_GET (", "prometheus_app (")
# Work a request hands to a thread pool (layer downloads) runs in pool workers outside the request's
# stack; the pools' idle workers have no Calyx frame and are left out.
POOL_FRAME = "_worker (concurrent/futures/thread.py"
OUR_CODE_IN_STACK = re.compile(r"[(/](cri|sandbox|metrics)/[^/]")
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]+?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Recorder:
    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        self.out = out
        argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
        argv += ["--rate", str(rate), "--idle", "--nonblocking"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.out


def frame_name(frame: str) -> tuple[str, bool]:
    """``module.py:function`` and whether it is Calyx's own code."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), False
    path = match["file"]
    ours = OUR_CODE.search(path) is not None and "/site-packages/" not in path
    short = "/".join(path.split("/")[-2:])
    return f"{short}:{match['func']}", ours


RPC_FRAME = re.compile(r"RPCs\.(\w+) \(")


def summarize(raw: Path, top: int = 15, rpc: str | None = None) -> str:
    """The functions of Calyx's code in most request samples (inclusive), and the leaf frames;
    with ``rpc``, only the samples of that RPC."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    by_rpc: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        request = any(marker in stack for marker in REQUEST_FRAMES)
        pooled = POOL_FRAME in stack and OUR_CODE_IN_STACK.search(stack) is not None
        if not request and not pooled:
            continue
        method = RPC_FRAME.search(stack)
        if method:
            name = method[1]
        elif "prometheus_app (" in stack:
            name = "metrics"
        else:
            name = "(thread-pool work)" if pooled else "(other)"
        if rpc is not None and name != rpc:
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        count = int(count_text)
        by_rpc[name] += count
        total += count
        for name in {name for name, ours in frames if ours}:
            inclusive[name] += count
        leaves[frames[-1][0]] += count
    if not total:
        return "no samples of requests being served"
    lines = [f"{total} samples of requests being served (wall clock, waits included)", "", "by RPC:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in by_rpc.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    lines += ["", "leaf frames (where the time is actually spent):"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in leaves.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.profile", description="rank a py-spy raw profile")
    parser.add_argument("raw", type=Path)
    parser.add_argument("--rpc", help="only the samples of this RPC (e.g. ListContainers, or metrics)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    print(summarize(args.raw, args.top, args.rpc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
