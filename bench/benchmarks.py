"""The benchmarks, each driving one runtime through its CRI endpoint.

Every benchmark fills named ``Result``s. One that cannot run (an RPC answers UNIMPLEMENTED, a step
fails) marks the results it owns with why, cleans up what it made, and the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx

from bench import procs
from bench.client import WORKLOAD, Client, RPCError, Workload
from bench.grpc_floor import GrpcFloor, raw_reply
from bench.sizes import Size
from bench.stats import Result, Skip
from cri.api import api_pb2 as pb

log = logging.getLogger("bench")

MB = 1024 * 1024
# Benchmark groups, as --only names them (the Bench methods).
GROUPS = [
    "daemon_rss_idle",
    "pull",
    "pod_lifecycle",
    "pods_alive",
    "shared_pid_pods",
    "container_lifecycle",
    "whole_path",
    "exec_sync",
    "parallel",
    "population",
]


@dataclass
class Target:
    """One runtime under test, as the benchmarks see it."""

    name: str
    client: Client
    pid: int | None  # the daemon's PID, for its RSS
    metrics_url: str | None
    image: str  # the busybox image every container runs
    big_image: str  # the image with the big layer, for pulls
    big_bytes: int  # bytes the pull of big_image downloads (compressed layers + config)
    log_root: Path
    cgroup_root: str
    # Download and unpack time (ms) of the last pull, when the runtime tells; else None.
    pull_phases: Callable[[], dict[str, float] | None] | None = None
    # Strings in the command line of this runtime's helpers (its private dirs, its socket).
    markers: list[str] = field(default_factory=list)


T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    """``fn(*args)`` and the milliseconds it took."""
    start = time.perf_counter()
    value = fn(*args)
    return (time.perf_counter() - start) * 1000, value


class Bench:
    def __init__(self, target: Target, size: Size) -> None:
        self.t = target
        self.size = size
        self.client = target.client
        self.work = Workload(target.client, target.image, target.log_root, target.cgroup_root)
        self.results: dict[str, Result] = {}
        self.only: set[str] | None = None  # benchmark groups to run (GROUPS); None: all
        # The gRPC floor (bench/grpc_floor.py) the List calls are timed against, and what it measured.
        self.grpc_floor: GrpcFloor | None = None
        self.floor_results: dict[str, Result] = {}

    # --- bookkeeping ------------------------------------------------------------------------------

    def result(self, name: str, unit: str, higher_is_better: bool = False) -> Result:
        if name not in self.results:
            self.results[name] = Result(name, unit, higher_is_better=higher_is_better)
        return self.results[name]

    def guarded(self, names: list[tuple[str, str]], fn: Callable[[], None]) -> None:
        """Run one benchmark; on failure mark its results (unit per name) with the reason."""
        for name, unit in names:
            self.result(name, unit, higher_is_better=unit in ("MB/s", "pods/s"))
        if names and self.only is not None and fn.__name__ not in self.only:
            for name, _ in names:
                self.results[name].status = "n/a: not selected (--only)"
            return
        reason = ""
        try:
            fn()
        except Skip as exc:
            reason = str(exc)
        except (RPCError, httpx.HTTPError, OSError, RuntimeError) as exc:
            reason = f"error: {exc}"
            log.warning("%s: %s", self.t.name, reason)
        finally:
            errors = self.work.cleanup()
            if errors:
                log.warning(
                    "%s: %d pods not removed through CRI (host-level cleanup follows); first: %s",
                    self.t.name,
                    len(errors),
                    errors[0][:300],
                )
        if reason:
            for name, _ in names:
                result = self.results[name]
                if not result.samples or result.status != "ok":
                    result.status = reason
                    result.samples = []

    def steps(self) -> list[tuple[list[tuple[str, str]], Callable[[], None]]]:
        """The benchmarks in order, each with the results (name, unit) it fills."""
        low, high = self.size.list_counts
        population = [
            ("helper_rss_per_pod", "MB"),
            ("helper_pss_per_pod", "MB"),
            ("helper_rss_per_container", "MB"),
            ("helper_pss_per_container", "MB"),
            (f"daemon_rss_{self.size.pods}_pods", "MB"),
            (f"metrics_scrape_{self.size.scrape_containers}", "ms"),
        ]
        for n in (low, high):
            population += [
                (f"list_containers_{n}", "ms"),
                (f"list_pod_sandbox_{n}", "ms"),
                (f"list_container_stats_{n}", "ms"),
            ]
        return [
            ([("daemon_rss_idle", "MB")], self.daemon_rss_idle),
            (
                [("pull_mbps", "MB/s"), ("pull_time", "ms"), ("pull_download", "ms"), ("pull_unpack", "ms")],
                self.pull,
            ),
            ([], self.prepull),
            ([("run_pod_sandbox", "ms"), ("pod_teardown_empty", "ms")], self.pod_lifecycle),
            (
                [
                    (f"run_pod_sandbox_{self.size.alive_pods}_alive", "ms"),
                    (f"pod_teardown_{self.size.alive_pods}_alive", "ms"),
                ],
                self.pods_alive,
            ),
            (
                [
                    ("run_pod_sandbox_shared_pid", "ms"),
                    ("helper_rss_per_pod_shared_pid", "MB"),
                    ("helper_pss_per_pod_shared_pid", "MB"),
                ],
                self.shared_pid_pods,
            ),
            ([("container_create_start", "ms"), ("container_stop_remove", "ms")], self.container_lifecycle),
            ([("pod_with_container", "ms"), ("pod_teardown", "ms")], self.whole_path),
            ([("exec_sync", "ms")], self.exec_sync),
            ([(f"parallel_{self.size.parallel_pods}_pods", "pods/s")], self.parallel),
            (population, self.population),
        ]

    def run_all(self) -> dict[str, Result]:
        for names, fn in self.steps():
            self.guarded(names, fn)
        return self.results

    # --- benchmarks -------------------------------------------------------------------------------

    def daemon_rss_idle(self) -> None:
        self.record_rss("daemon_rss_idle")

    def record_rss(self, name: str) -> None:
        if self.t.pid is None:
            raise Skip("n/a: daemon PID unknown")
        kb = procs.rss_kb(self.t.pid)
        if kb is None:
            raise RuntimeError(f"daemon PID {self.t.pid} is gone")
        self.results[name].samples.append(kb / 1024)

    def remove_image(self, ref: str) -> None:
        try:
            self.client.img("RemoveImage", pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
        except RPCError as exc:
            if "NOT_FOUND" not in str(exc):
                raise

    def pull(self) -> None:
        mbps, seconds = self.results["pull_mbps"], self.results["pull_time"]
        phases: list[dict[str, float]] = []
        request = pb.PullImageRequest(image=pb.ImageSpec(image=self.t.big_image))
        for _ in range(self.size.pull_reps):
            self.remove_image(self.t.big_image)
            ms, _reply = timed(self.client.img, "PullImage", request)
            seconds.samples.append(ms)
            mbps.samples.append(self.t.big_bytes / MB / (ms / 1000))
            if self.t.pull_phases is not None:
                split = self.t.pull_phases()
                if split:
                    phases.append(split)
        self.remove_image(self.t.big_image)
        mbps.extra["bytes"] = self.t.big_bytes
        for phase in ("download", "unpack"):
            result = self.results[f"pull_{phase}"]
            if len(phases) == len(seconds.samples):
                result.samples = [p[phase] for p in phases]
            else:
                result.status = "n/a: not reported separately (see pull_time)"

    def prepull(self) -> None:
        """The busybox image, before anything is timed (a failure shows in the benchmarks that need it)."""
        if self.only is not None and not self.only - {"daemon_rss_idle", "pull"}:
            return
        try:
            self.client.img("PullImage", pb.PullImageRequest(image=pb.ImageSpec(image=self.t.image)))
        except (Skip, RPCError) as exc:
            log.warning("%s: pull of %s: %s", self.t.name, self.t.image, exc)

    def pod_lifecycle(self) -> None:
        """One pod at a time, no other pod alive (``crictl runp``, ``stopp``, ``rmp`` in a loop): the
        first and last pod of a node, where a network made for the first pod and taken away with the
        last one would cost most."""
        run, teardown = self.results["run_pod_sandbox"], self.results["pod_teardown_empty"]
        self.note_others_alive(run, teardown)
        self.pod_loop(run, teardown)

    def pods_alive(self) -> None:
        """The same loop with ``alive_pods`` other pods running meanwhile."""
        n = self.size.alive_pods
        run, teardown = self.results[f"run_pod_sandbox_{n}_alive"], self.results[f"pod_teardown_{n}_alive"]
        for _ in range(n):
            self.work.run_pod()
        self.note_others_alive(run, teardown)
        self.pod_loop(run, teardown)

    def pod_loop(self, run: Result, teardown: Result) -> None:
        for _ in range(self.size.reps):
            ms, pod = timed(self.work.run_pod)
            run.samples.append(ms)
            teardown.samples.append(timed(self.work.remove_pod, pod)[0])

    def note_others_alive(self, *results: Result) -> None:
        """How many pods were alive while ``results`` were measured (an --endpoint may have its own)."""
        alive = len(self.client.rt("ListPodSandbox", pb.ListPodSandboxRequest()).items)
        for result in results:
            result.extra["pods_alive"] = alive

    def shared_pid_pods(self) -> None:
        """Pods sharing one PID namespace (NamespaceMode POD): their start and the process that holds
        the namespace (Calyx: catatonit; containerd: the pause container)."""
        run = self.results["run_pod_sandbox_shared_pid"]
        before = procs.snapshot()
        for _ in range(self.size.reps):
            ms, _pod = timed(self.work.run_pod, True)
            run.samples.append(ms)
        self.record_helpers("pod", procs.new_since(before), self.size.reps, suffix="_shared_pid")

    def container_lifecycle(self) -> None:
        create, remove = self.results["container_create_start"], self.results["container_stop_remove"]
        pod = self.work.run_pod()
        for i in range(self.size.reps):
            ms, container = timed(self.work.start_container, pod, i)
            create.samples.append(ms)
            remove.samples.append(timed(self.work.remove_container, container)[0])

    def pod_with_container(self) -> str:
        pod = self.work.run_pod()
        self.work.start_container(pod)
        return pod

    def whole_path(self) -> None:
        path, teardown = self.results["pod_with_container"], self.results["pod_teardown"]
        for _ in range(self.size.reps):
            ms, pod = timed(self.pod_with_container)
            path.samples.append(ms)
            teardown.samples.append(timed(self.work.remove_pod, pod)[0])

    def exec_sync(self) -> None:
        result = self.results["exec_sync"]
        pod = self.work.run_pod()
        container = self.work.start_container(pod)
        request = pb.ExecSyncRequest(container_id=container, cmd=["true"], timeout=10)
        for _ in range(self.size.exec_reps):
            ms, reply = timed(self.client.rt, "ExecSync", request)
            result.samples.append(ms)
            if reply.exit_code != 0:
                raise RuntimeError(f"ExecSync true exited {reply.exit_code}: {reply.stderr[:200]!r}")

    def parallel(self) -> None:
        result = self.results[f"parallel_{self.size.parallel_pods}_pods"]
        n = self.size.parallel_pods
        for _ in range(self.size.parallel_reps):
            errors: list[BaseException] = []
            pods: list[str] = []
            lock = threading.Lock()

            def one(pods: list[str] = pods, errors: list[BaseException] = errors, lock: Any = lock) -> None:
                try:
                    pod = self.work.run_pod()
                    with lock:
                        pods.append(pod)
                    self.work.start_container(pod)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=one) for _ in range(n)]
            start = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - start
            if errors:
                raise errors[0]
            result.samples.append(n / elapsed)
            self.remove_pods_parallel(pods)

    def remove_pods_parallel(self, pods: list[str]) -> None:
        threads = [threading.Thread(target=self.work.remove_pod, args=(p,)) for p in pods]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    def population(self) -> None:
        """Pods, then containers added until each target count, measuring what each count needs.

        Daemon RSS "with N pods" is taken once every pod runs one container; if containers cannot
        start, it is taken with the empty pods and says so.
        """
        size = self.size
        rss = self.results[f"daemon_rss_{size.pods}_pods"]
        before = procs.snapshot()
        pods = [self.work.run_pod() for _ in range(size.pods)]
        self.record_helpers("pod", procs.new_since(before), len(pods))
        empty_pods_rss = procs.rss_kb(self.t.pid) if self.t.pid else None
        containers: list[str] = []
        low, high = size.list_counts
        try:
            for target in size.population_targets():
                before = procs.snapshot()
                added = 0
                while len(containers) < target:
                    pod = pods[len(containers) % len(pods)]
                    containers.append(self.work.start_container(pod, len(containers)))
                    added += 1
                if not self.results["helper_rss_per_container"].samples:
                    self.record_helpers("container", procs.new_since(before), added)
                if not rss.samples and len(containers) >= len(pods):
                    self.record_rss(rss.name)
                    rss.extra["containers"] = len(containers)
                if target in (low, high):
                    self.measure_lists(target)
                if target == size.scrape_containers:
                    self.scrape(target)
        finally:
            if not rss.samples and empty_pods_rss is not None:
                rss.samples.append(empty_pods_rss / 1024)
                rss.extra["containers"] = 0

    def record_helpers(self, per: str, new: list[procs.Proc], count: int, suffix: str = "") -> None:
        """Memory of the processes that appeared while ``count`` pods (or containers) were made,
        less the workloads themselves."""
        mine = procs.owned(new, self.t.markers, self.t.cgroup_root, self.t.pid)
        helpers = [p for p in mine if p.cmdline != tuple(WORKLOAD) and p.pid != self.t.pid]
        mem = procs.memory_of(helpers)
        rss = self.results[f"helper_rss_per_{per}{suffix}"]
        pss = self.results[f"helper_pss_per_{per}{suffix}"]
        rss.samples.append(mem.rss_kb / 1024 / max(count, 1))
        pss.samples.append(mem.pss_kb / 1024 / max(count, 1))
        rss.extra["processes"] = mem.by_comm
        rss.extra["count"] = count

    def measure_lists(self, n: int) -> None:
        fast, slow = self.size.fast_list_reps, self.size.list_reps
        calls = [
            (f"list_containers_{n}", "ListContainers", pb.ListContainersRequest(), fast),
            (f"list_pod_sandbox_{n}", "ListPodSandbox", pb.ListPodSandboxRequest(), fast),
            (f"list_container_stats_{n}", "ListContainerStats", pb.ListContainerStatsRequest(), slow),
        ]
        for name, rpc, request, reps in calls:
            result = self.results[name]
            floor = self.grpc_floor if rpc != "ListContainerStats" else None
            try:
                if floor is not None:
                    self.list_beside_floor(floor, result, rpc, request, reps)
                else:
                    for _ in range(reps):
                        result.samples.append(timed(self.client.rt, rpc, request)[0])
            except Skip as exc:
                result.status = str(exc)
                result.samples = []
            except RPCError as exc:
                result.status = f"error: {exc}"
                result.samples = []

    def list_beside_floor(self, floor: GrpcFloor, result: Result, rpc: str, request: Any, reps: int) -> None:
        """Calls to the runtime and to the gRPC floor answering the runtime's own reply, alternately,
        so that both see the same moments of the machine's load. A floor that fails is reported as such
        and the runtime's calls go on alone."""
        method = f"/runtime.v1.RuntimeService/{rpc}"
        name = f"grpc_{result.name}"
        mine = self.floor_results.setdefault(name, Result(name, result.unit))
        working: GrpcFloor | None = floor
        try:
            floor.store(method, raw_reply(self.client.channel, method, request))
        except grpc.RpcError as exc:
            mine.status, working = f"error: gRPC floor: {exc}", None
        for _ in range(reps):
            result.samples.append(timed(self.client.rt, rpc, request)[0])
            if working is not None:
                try:
                    mine.samples.append(timed(working.client.rt, rpc, request)[0])
                except RPCError as exc:
                    mine.status, mine.samples, working = f"error: gRPC floor: {exc}", [], None

    def scrape(self, n: int) -> None:
        result = self.results[f"metrics_scrape_{n}"]
        if not self.t.metrics_url:
            result.status = "n/a: no metrics endpoint"
            return
        try:
            with httpx.Client(timeout=60) as http:
                for _ in range(self.size.list_reps):
                    ms, response = timed(http.get, self.t.metrics_url)
                    response.raise_for_status()
                    result.samples.append(ms)
                result.extra["bytes"] = len(response.content)
        except httpx.HTTPError as exc:
            result.status = f"error: GET {self.t.metrics_url}: {exc}"
            result.samples = []
