"""``python -m bench``: run every benchmark against Calyx (or a given endpoint), optionally against
containerd as the reference, and against runc's floor; print a table and write JSON and Markdown.

    python -m bench [--endpoint unix:///run/calyx/calyx.sock] [--reference containerd]
                    [--size tiny|full] [--out bench/results/]

Without ``--endpoint`` a Calyx is started on private dirs and stopped after. Runtimes are measured
one after the other, never at the same time, on the same images from the same loopback registry.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bench import calyx, containerd, env, floor, procs, profile, report
from bench.benchmarks import GROUPS, Bench, Target
from bench.client import Client, RPCError
from bench.sizes import SIZES, Size, benchmark_names
from bench.stats import Result

log = logging.getLogger("bench")

# 1-minute load average before and after each runtime's benchmarks: the machine may be shared, and a
# reader of the results should know how busy it was.
LOADS: dict[str, list[float]] = {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", help="CRI endpoint (unix:///path); default: start a Calyx of our own")
    parser.add_argument("--metrics-url", help="Prometheus endpoint of --endpoint (default: none)")
    parser.add_argument(
        "--registry-port",
        type=int,
        default=0,
        help="port of the loopback registry (default: a free one); an --endpoint must allow plain HTTP to it",
    )
    parser.add_argument("--reference", choices=["containerd", "none"], default="none")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--no-floor", action="store_true", help="skip the runc floor")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--only", help=f"comma-separated benchmark groups to run: {', '.join(GROUPS)} (default: all)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample Calyx with py-spy meanwhile; rank its hot functions"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's temp dir (daemon logs) after")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def subnet(octet: int) -> str:
    return f"10.{octet}.{secrets.randbelow(64) * 4}.0/22"


def measure(target: Target, size: Size, args: argparse.Namespace) -> dict[str, Result]:
    log.info("%s: benchmarking (size %s)", target.name, size.name)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    bench = Bench(target, size)
    if args.only:
        bench.only = {g.strip() for g in args.only.split(",") if g.strip()}
    recorder = None
    if args.profile and target.name == "calyx" and target.pid is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        recorder = profile.Recorder(
            target.pid, args.out / f"profile-calyx-{time.strftime('%Y%m%dT%H%M%S')}.txt"
        )
    try:
        results = bench.run_all()
    finally:
        if recorder is not None:
            raw = recorder.stop()
            if raw.exists():
                summary = profile.summarize(raw)
                raw.with_suffix(".summary.txt").write_text(summary + "\n")
                print(f"profile of calyx ({raw}):\n{summary}\n")
            else:
                log.warning(
                    "py-spy wrote no profile: %s",
                    recorder.proc.stderr.read().decode()[-500:] if recorder.proc.stderr else "",
                )
    LOADS[target.name] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    log.info("%s: done in %.0f s", target.name, time.monotonic() - started)
    return results


def failed(size: Size, reason: str) -> dict[str, Result]:
    """Every result of a runtime that could not be measured at all, saying why."""
    return {name: Result(name, "", status=reason) for name in benchmark_names(size)}


def run_calyx(
    args: argparse.Namespace, size: Size, images: env.Images, base: Path, tag: str
) -> dict[str, Result]:
    cgroup_root = f"/cxbench-{tag}-c"
    if args.endpoint:
        client = Client(args.endpoint)
        try:
            client.wait_ready(30)
            path = args.endpoint.removeprefix("unix://")
            target = Target(
                "calyx",
                client,
                procs.pid_of_socket(path),
                args.metrics_url,
                images.busybox,
                images.big,
                images.big_bytes,
                base / "calyx-logs",
                cgroup_root,
                # The socket's dir is the run root in the default layout (/run/calyx): monitors and
                # namespace holders name it in their command lines.
                markers=[str(Path(path).parent)],
            )
            return measure(target, size, args)
        finally:
            client.close()
    daemon = calyx.Calyx(base / "calyx", images.registry.host, f"cxb{tag}c", subnet(231), cgroup_root)
    if daemon.dropped:
        log.info("calyx: options this build lacks (left out): %s", ", ".join(daemon.dropped))
    try:
        try:
            daemon.start()
        except (RuntimeError, TimeoutError) as exc:
            return failed(size, f"error: calyx did not start: {' '.join(str(exc).split())[:400]}")
        client = Client(daemon.endpoint)
        try:
            target = Target(
                "calyx",
                client,
                daemon.pid,
                daemon.metrics_url,
                images.busybox,
                images.big,
                images.big_bytes,
                base / "calyx" / "pod-logs",
                cgroup_root,
                pull_phases=daemon.pull_phases,
                markers=[str(daemon.base)],
            )
            return measure(target, size, args)
        finally:
            client.close()
    finally:
        left = daemon.stop()
        if left:
            log.warning("calyx: cgroups left behind: %s", left)


def run_containerd(
    args: argparse.Namespace, size: Size, images: env.Images, base: Path, tag: str
) -> dict[str, Result] | str:
    why = containerd.ensure_installed()
    if why:
        return why
    ref = containerd.Containerd(
        base / "ctd", images.registry.host, images.pause, f"cxb{tag}d", subnet(232), f"/cxbench-{tag}-d"
    )
    try:
        try:
            ref.start()
        except (RuntimeError, OSError) as exc:
            return f"reference failed to start: {exc}"
        client = Client(ref.endpoint)
        try:
            client.wait_ready(60)
            target = Target(
                "containerd",
                client,
                ref.pid,
                ref.metrics_url,
                images.busybox,
                images.big,
                images.big_bytes,
                base / "ctd-logs",
                ref.cgroup_root,
                markers=[str(ref.base)],
            )
            return measure(target, size, args)
        except RPCError as exc:
            return f"reference failed: {exc}; log: {ref.log_tail(800)}"
        finally:
            client.close()
    finally:
        left = ref.stop()
        if left:
            log.warning("containerd: cgroups left behind: %s", left)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print("the benchmarks run as root (runtimes, cgroups, mounts)", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    tag = secrets.token_hex(2)
    base = env.make_base()
    results: dict[str, dict[str, Result]] = {}
    notes: dict[str, str] = {}
    try:
        log.info("registry: pushing test images (big layer %d MB)", size.pull_mb)
        images = env.start_registry(base / "reg", size.pull_mb, args.registry_port)
        try:
            results[report.CALYX] = run_calyx(args, size, images, base, tag)
            if args.reference == "containerd":
                outcome = run_containerd(args, size, images, base, tag)
                if isinstance(outcome, str):
                    notes[report.REFERENCE] = outcome
                    log.warning("%s", outcome)
                else:
                    results[report.REFERENCE] = outcome
            if not args.no_floor:
                (base / "floor").mkdir()
                results[report.FLOOR] = floor.run_floor(
                    base / "floor", env.busybox_rootfs_tar(), size.reps, f"/cxbench-{tag}-f"
                )
        finally:
            images.stop()
    finally:
        if args.keep:
            print(f"kept {base} (logs of the runtimes)")
        else:
            env.remove_base(base)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "size": size.name,
        "endpoint": args.endpoint or "calyx (started by the benchmark)",
        "machine": report.machine(),
        "versions": {
            "calyx": f"{calyx.version()} ({calyx.git_version()})",
            "runc": floor.version(),
            "conmon": calyx.conmon_version(),
            "containerd": containerd.version() if containerd.installed() else "not installed",
        },
        "notes": notes,
        "load_1m": LOADS,
    }
    json_path, md_path, text = report.write(args.out, results, size, meta)
    print(text)
    for note in notes.values():
        print(f"\nnote: {note}")
    print(f"\nwrote {json_path} and {md_path}")
    return 0
