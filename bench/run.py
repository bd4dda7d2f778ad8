"""``python -m bench``: run every benchmark against Calyx (or a given endpoint), optionally against
containerd as the reference, and against runc's floor; print a table and write JSON and Markdown.

    python -m bench [--endpoint unix:///run/calyx/calyx.sock] [--reference containerd]
                    [--network cni|builtin|both] [--size tiny|full] [--out bench/results/]

Without ``--endpoint`` Calyx is started on private dirs and stopped after: one daemon per network
measured, on a CNI conflist (``calyx``) and on the built-in network a new user gets (``calyx-builtin``).
With a reference, every daemon runs for the whole run and the benchmarks alternate between them step by
step (never two benchmarks at the same time), on the same images from the same loopback registry.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import calyx, containerd, env, floor, procs, profile, report
from bench.benchmarks import GROUPS, Bench, Target
from bench.client import Client, RPCError
from bench.grpc_floor import GrpcFloor
from bench.sizes import SIZES, Size, benchmark_names
from bench.stats import Result
from tests import host_cleanup as host

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
    parser.add_argument(
        "--network",
        choices=["cni", "builtin", "both"],
        default="both",
        help="the pod networks Calyx is measured on, a daemon each (default: both); not with --endpoint",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--no-floor", action="store_true", help="skip the runc floor")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--only", help=f"comma-separated benchmark groups to run: {', '.join(GROUPS)} (default: all)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample Calyx with py-spy meanwhile; rank its hot functions"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="each runtime's benchmarks whole, not interleaved step by step",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's temp dir (daemon logs) after")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def subnet(octet: int) -> str:
    return f"10.{octet}.{secrets.randbelow(64) * 4}.0/22"


def calyx_name(network: str) -> str:
    """The name of Calyx on ``network`` in results: ``calyx`` (CNI) or ``calyx-builtin``."""
    return report.CALYX if network == "cni" else report.CALYX_BUILTIN


@contextlib.contextmanager
def calyx_target(
    args: argparse.Namespace, images: env.Images, base: Path, tag: str, network: str = "cni"
) -> Iterator[Target | str]:
    """Calyx as a Target (started on private dirs on ``network`` unless --endpoint), or why it cannot
    be measured."""
    name = calyx_name(network)
    letter = "c" if network == "cni" else "b"
    cgroup_root = f"/cxbench-{tag}-{letter}"
    if args.endpoint:
        client = Client(args.endpoint)
        try:
            client.wait_ready(30)
            path = args.endpoint.removeprefix("unix://")
            yield Target(
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
        finally:
            client.close()
            # The cgroup root is the run's own even on a daemon we did not start.
            host.remove_cgroups(cgroup_root.strip("/"))
        return
    octet = 231 if network == "cni" else 233
    daemon = calyx.Calyx(
        base / name, images.registry.host, f"cxb{tag}{letter}", subnet(octet), cgroup_root, network
    )
    if daemon.dropped:
        log.info("%s: options this build lacks (left out): %s", name, ", ".join(daemon.dropped))
    try:
        try:
            daemon.start()
        except (RuntimeError, TimeoutError) as exc:
            yield f"error: {name} did not start: {' '.join(str(exc).split())[:400]}"
            return
        client = Client(daemon.endpoint)
        try:
            yield Target(
                name,
                client,
                daemon.pid,
                daemon.metrics_url,
                images.busybox,
                images.big,
                images.big_bytes,
                base / name / "pod-logs",
                cgroup_root,
                pull_phases=daemon.pull_phases,
                markers=[str(daemon.base)],
            )
        finally:
            client.close()
    finally:
        left = daemon.stop()
        if left:
            log.warning("%s: cgroups left behind: %s", name, left)


@contextlib.contextmanager
def containerd_target(images: env.Images, base: Path, tag: str) -> Iterator[Target | str]:
    """containerd as a Target (installed if missing, started on private dirs), or why not."""
    why = containerd.ensure_installed()
    if why:
        yield why
        return
    ref = containerd.Containerd(
        base / "ctd", images.registry.host, images.pause, f"cxb{tag}d", subnet(232), f"/cxbench-{tag}-d"
    )
    try:
        try:
            ref.start()
        except (RuntimeError, OSError) as exc:
            yield f"reference failed to start: {exc}"
            return
        client = Client(ref.endpoint)
        try:
            client.wait_ready(60)
        except RPCError as exc:
            client.close()
            yield f"reference not ready: {exc}; log: {ref.log_tail(800)}"
            return
        try:
            yield Target(
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
        finally:
            client.close()
    finally:
        left = ref.stop()
        if left:
            log.warning("containerd: cgroups left behind: %s", left)


def measure(
    targets: list[Target],
    size: Size,
    args: argparse.Namespace,
    beside: dict[str, Callable[[], None]] | None = None,
    grpc_floor_socket: Path | None = None,
) -> dict[str, dict[str, Result]]:
    """Run the benchmarks on every target. With several, step by step in turn (interleaved), so that a
    change in the machine's load meanwhile falls on all of them alike; --sequential runs each whole.
    ``beside`` maps a step (a Bench method name) to work run right after it (the floor goes beside
    the container benchmark it is compared with). With ``grpc_floor_socket``, Calyx's List calls
    alternate with calls to the gRPC floor (bench/grpc_floor.py) served there."""
    benches = [Bench(t, size) for t in targets]
    only = {g.strip() for g in args.only.split(",") if g.strip()} if args.only else None
    for b in benches:
        b.only = only
    with contextlib.ExitStack() as stack:
        ours = next((b for b in benches if b.t.name == report.CALYX), None)
        if ours is not None and grpc_floor_socket is not None:
            ours.grpc_floor = stack.enter_context(contextlib.closing(GrpcFloor(grpc_floor_socket)))
        results = _measure(benches, args, beside)
        if ours is not None and ours.floor_results:
            results.setdefault(report.FLOOR, {}).update(ours.floor_results)
        return results


def _measure(
    benches: list[Bench], args: argparse.Namespace, beside: dict[str, Callable[[], None]] | None
) -> dict[str, dict[str, Result]]:
    targets = [b.t for b in benches]
    recorders: dict[str, profile.Recorder] = {}
    if args.profile:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for t in targets:
            if t.name in report.CALYX_TARGETS and t.pid is not None:
                recorders[t.name] = profile.Recorder(t.pid, args.out / f"profile-{t.name}-{stamp}.txt")
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    names = "+".join(t.name for t in targets)
    size = benches[0].size
    log.info("%s: benchmarking (size %s%s)", names, size.name, ", interleaved" if len(benches) > 1 else "")
    try:
        if args.sequential:
            for b in benches:
                b.run_all()
            for after in (beside or {}).values():
                after()
        else:
            for i in range(len(benches[0].steps())):
                for b in benches:
                    step_names, fn = b.steps()[i]
                    b.guarded(step_names, fn)
                follow = (beside or {}).get(benches[0].steps()[i][1].__name__)
                if follow is not None:
                    follow()
    finally:
        for who, recorder in recorders.items():
            raw = recorder.stop()
            if raw.exists():
                summary = profile.summarize(raw)
                raw.with_suffix(".summary.txt").write_text(summary + "\n")
                print(f"profile of {who} ({raw}):\n{summary}\n")
            else:
                err = recorder.proc.stderr.read().decode()[-500:] if recorder.proc.stderr else ""
                log.warning("py-spy wrote no profile of %s: %s", who, err)
    LOADS[names] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    log.info("%s: done in %.0f s", names, time.monotonic() - started)
    return {b.t.name: b.results for b in benches}


def failed(size: Size, reason: str) -> dict[str, Result]:
    """Every result of a runtime that could not be measured at all, saying why."""
    return {name: Result(name, "", status=reason) for name in benchmark_names(size)}


def _interrupt(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut the cleanups short
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print("the benchmarks run as root (runtimes, cgroups, mounts)", file=sys.stderr)
        return 2
    # SIGTERM (timeout(1), a CI job cancelled) ends the run like Ctrl-C: through the cleanups below,
    # which stop the runtimes, the registry and the containers this run started.
    signal.signal(signal.SIGTERM, _interrupt)
    size = SIZES[args.size]
    tag = secrets.token_hex(2)
    base = env.make_base()
    results: dict[str, dict[str, Result]] = {}
    notes: dict[str, str] = {}
    try:
        log.info("run tag %s, base %s", tag, base)
        log.info("registry: pushing test images (big layer %d MB)", size.pull_mb)
        images = env.start_registry(base / "reg", size.pull_mb, args.registry_port)
        try:
            with contextlib.ExitStack() as stack:
                targets: list[Target] = []
                networks = ["cni", "builtin"] if args.network == "both" else [args.network]
                for network in ["cni"] if args.endpoint else networks:
                    ours = stack.enter_context(calyx_target(args, images, base, tag, network))
                    if isinstance(ours, str):
                        results[report.CALYX if network == "cni" else report.CALYX_BUILTIN] = failed(
                            size, ours
                        )
                    else:
                        targets.append(ours)
                if args.reference == "containerd":
                    theirs = stack.enter_context(containerd_target(images, base, tag))
                    if isinstance(theirs, str):
                        notes[report.REFERENCE] = theirs
                        log.warning("%s", theirs)
                    else:
                        targets.append(theirs)

                def run_floor() -> None:
                    (base / "floor").mkdir(exist_ok=True)
                    results.setdefault(report.FLOOR, {}).update(
                        floor.run_floor(
                            base / "floor", env.busybox_rootfs_tar(), size.reps, f"/cxbench-{tag}-f"
                        )
                    )

                beside = {} if args.no_floor else {"container_lifecycle": run_floor}
                if targets:
                    grpc_floor = None if args.no_floor else base / "grpc-floor.sock"
                    for runtime, measured in measure(targets, size, args, beside, grpc_floor).items():
                        results.setdefault(runtime, {}).update(measured)
                elif beside:
                    run_floor()
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
        "networks": {
            report.CALYX: "the given endpoint's" if args.endpoint else "CNI (bridge + host-local)",
            report.CALYX_BUILTIN: "built-in (no CNI config)",
            report.REFERENCE: "CNI (bridge + host-local)",
        },
        "machine": report.machine(),
        "versions": {
            "calyx": f"{calyx.version()} ({calyx.git_version()})",
            "runc": floor.version(),
            "conmon": calyx.conmon_version(),
            "containerd": containerd.version() if containerd.installed() else "not installed",
        },
        "notes": notes,
        "load_1m": LOADS,
        # What names this run's host objects: cgroups /cxbench-<tag>-*, links cxb<tag>*, dirs under base.
        "run": {"tag": tag, "base": str(base)},
    }
    json_path, md_path, text = report.write(args.out, results, size, meta)
    print(text)
    for note in notes.values():
        print(f"\nnote: {note}")
    print(f"\nwrote {json_path} and {md_path}")
    return 0
