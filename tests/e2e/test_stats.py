"""Stats and metrics end to end: a real daemon running real workload containers in a pod on the built-in
network, read through the CRI stats RPCs, the /metrics endpoint, and a real Prometheus server scraping it.

The workloads: ``burn`` spins one CPU; the test waits until its process has used N CPU-seconds by the
kernel's own per-process account (/proc/PID/stat), freezes it with SIGSTOP, and then expects N
CPU-seconds in the container's stats. ``hold`` keeps a 64 MiB string in its shell and wrote a 2 MiB
file in its writable layer. Bytes sent from the host to the pod's address over the test's private
bridge must show in the pod's rx counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w

from cri.api import api_pb2 as pb
from tests import cgroup_files
from tests.daemon import Daemon
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import (
    Net,
    _host_restored,
    _remove_all_pods,
    _unique_n,
    free_port,
    pod_config,
    run_pod,
)
from tests.waiting import slowdown, wait_for

MiB = 1024 * 1024
BURN_SECONDS = 2.0
DEPLOY_SCRAPE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus.yml"
PROMETHEUS = "/usr/bin/prometheus"
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` by the kernel's per-process account (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of ``name`` in an exposition whose labels include ``labels``."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        have = dict(_LABEL.findall(match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found.append((have, float(match.group(3))))
    return found


@dataclass
class Workloads:
    net: Net
    pod_id: str
    pod_name: str
    pod_ip: str
    cgroup_parent: str
    burn_id: str
    burn_pid: int
    burn_cpu: float  # CPU-seconds the burner had used when frozen
    hold_id: str
    metrics_port: int

    @property
    def daemon(self) -> Daemon:
        return self.net.daemon


def _container(
    daemon: Daemon, pod_id: str, pod: pb.PodSandboxConfig, image: str, name: str, script: str
) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=["sh", "-c", script],
        log_path=f"{name}.log",
        labels={"workload": name},
    )
    cid = daemon.runtime.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=120
    ).container_id
    daemon.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
    return cid


def _pids(cgroup_parent: str, container_id: str) -> list[int]:
    try:
        return cgroup_files.procs(f"{cgroup_parent}/calyx-{container_id}")
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def workloads(
    image_registry: LoopbackRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workloads]:
    """One daemon, one pod, two workload containers, shared by the tests of this module (they only read)."""
    base = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
    stack = contextlib.ExitStack()
    daemon: Daemon | None = None
    try:
        n = _unique_n()
        bridge, subnet = f"cxp{n}", f"10.250.{n}.0/24"
        stack.enter_context(_host_restored(bridge))
        conf_dir = base / "nocni"
        conf_dir.mkdir()
        port = free_port()
        daemon_dir = base / "d"
        daemon_dir.mkdir()
        daemon = Daemon(
            daemon_dir,
            {
                "network": {"bridge": bridge, "subnet": subnet, "cni_conf_dir": str(conf_dir)},
                "images": {"registries": {image_registry.host: {"insecure": True}}},
                "metrics": {"enabled": True, "address": "127.0.0.1", "port": port},
            },
        ).start()
        net = Net(daemon, bridge, subnet)
        image = image_registry.ref("calyx-test/busybox:1.35")
        daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)
        parent = f"/calyx-mtest-{os.getpid()}-{random.getrandbits(24):06x}"
        pod = pod_config(log_directory=str(base / "logs"))
        pod.linux.cgroup_parent = parent
        pod_id = run_pod(daemon, pod)
        pod_status = daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status
        burn_id = _container(daemon, pod_id, pod, image, "burn", "while :; do :; done")
        hold_id = _container(
            daemon,
            pod_id,
            pod,
            image,
            "hold",
            "dd if=/dev/zero of=/big bs=1M count=2 2>/dev/null; "
            "x=$(head -c 67108864 /dev/zero | tr '\\0' x); touch /ready; sleep 3600; true",
        )
        (burn_pid,) = wait_for(lambda: _pids(parent, burn_id), "the burner's process")
        wait_for(lambda: process_cpu_seconds(burn_pid) >= BURN_SECONDS, "the burner to use its CPU time", 120)
        os.kill(burn_pid, signal.SIGSTOP)
        wait_for(
            lambda: Path(f"/proc/{burn_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", "stop"
        )
        burn_cpu = process_cpu_seconds(burn_pid)
        ready = daemon.root / "containers" / hold_id / "upper" / "ready"
        wait_for(ready.exists, "the holder to hold its memory", 120)
        yield Workloads(
            net,
            pod_id,
            pod.metadata.name,
            pod_status.network.ip,
            parent,
            burn_id,
            burn_pid,
            burn_cpu,
            hold_id,
            port,
        )
    finally:
        if daemon is not None:
            _remove_all_pods(daemon)
            daemon.stop()
        stack.close()
        shutil.rmtree(base, ignore_errors=True)
        for hierarchy in [cgroup_files.ROOT, *cgroup_files.ROOT.iterdir()]:  # the pod's parent, if left
            for leftover in hierarchy.glob(f"calyx-mtest-{os.getpid()}-*") if hierarchy.is_dir() else []:
                with contextlib.suppress(OSError):
                    leftover.rmdir()


def _stats(w: Workloads, container_id: str) -> pb.ContainerStats:
    return w.daemon.runtime.ContainerStats(
        pb.ContainerStatsRequest(container_id=container_id), timeout=30
    ).stats


def test_container_stats_show_the_cpu_seconds_burnt(workloads: Workloads) -> None:
    stats = _stats(workloads, workloads.burn_id)
    assert stats.attributes.id == workloads.burn_id
    assert stats.attributes.metadata.name == "burn"
    assert dict(stats.attributes.labels) == {"workload": "burn"}
    used = stats.cpu.usage_core_nano_seconds.value / 1e9
    # The process is frozen: the cgroup's total is its CPU time (in 1/TICK s units) plus the shell's start
    # (and runc's init before it: slower machines spend more there).
    start = 0.3 * slowdown()
    assert workloads.burn_cpu - 2 / TICK <= used <= workloads.burn_cpu + start, (used, workloads.burn_cpu)
    assert used >= BURN_SECONDS
    assert stats.cpu.timestamp > 0 and stats.memory.timestamp > 0
    # Pressure stall information, from the container's directory in the cgroup2 tree (v1: the hybrid one).
    assert stats.cpu.HasField("psi") and stats.memory.HasField("psi") and stats.io.HasField("psi")
    assert stats.cpu.psi.Some.Avg300 >= 0 and stats.io.timestamp == stats.cpu.timestamp
    # A prefix names the container too.
    assert _stats(workloads, workloads.burn_id[:12]).attributes.id == workloads.burn_id


def _fault_size() -> int:
    """The most memory one page fault can bring in: a 2 MiB huge page where transparent huge pages are
    always on (Debian's kernel in the node lab), else a 4 KiB page."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return 2 * MiB if thp.exists() and "[always]" in thp.read_text() else 4096


def test_container_stats_show_the_memory_held_and_the_writable_layer(workloads: Workloads) -> None:
    stats = _stats(workloads, workloads.hold_id)
    memory = stats.memory
    assert 64 * MiB <= memory.working_set_bytes.value <= 200 * MiB, memory.working_set_bytes.value / MiB
    assert memory.rss_bytes.value >= 64 * MiB
    assert memory.usage_bytes.value >= memory.working_set_bytes.value
    assert memory.page_faults.value >= 64 * MiB // _fault_size()
    assert not stats.memory.HasField("available_bytes")  # no limit: nothing to be available against
    layer = stats.writable_layer
    assert 2 * MiB <= layer.used_bytes.value <= 3 * MiB
    assert layer.inodes_used.value >= 3  # the upper dir, /big, /ready
    assert layer.fs_id.mountpoint.startswith("/")


def test_usage_nano_cores_is_a_rate_between_readings(workloads: Workloads) -> None:
    first = _stats(workloads, workloads.hold_id)
    time.sleep(1.1)  # the rate's baseline moves after a second
    second = _stats(workloads, workloads.hold_id)
    assert second.cpu.HasField("usage_nano_cores")
    # A sleeping shell: close to no CPU at all, and never more than one core.
    assert second.cpu.usage_nano_cores.value < 50_000_000
    assert second.cpu.timestamp > first.cpu.timestamp


def test_list_container_stats_filters(workloads: Workloads) -> None:
    rt = workloads.daemon.runtime

    def ids(**flt: Any) -> set[str]:
        request = pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(**flt))
        return {s.attributes.id for s in rt.ListContainerStats(request, timeout=30).stats}

    both = {workloads.burn_id, workloads.hold_id}
    assert ids() == both
    assert ids(pod_sandbox_id=workloads.pod_id) == both
    assert ids(pod_sandbox_id=workloads.pod_id[:10]) == both
    assert ids(id=workloads.hold_id) == {workloads.hold_id}
    assert ids(label_selector={"workload": "burn"}) == {workloads.burn_id}
    assert ids(label_selector={"workload": "nope"}) == set()
    assert ids(pod_sandbox_id="f" * 64) == set()
    streamed = [
        s.attributes.id
        for response in rt.StreamContainerStats(pb.StreamContainerStatsRequest(), timeout=30)
        for s in response.container_stats
    ]
    assert sorted(streamed) == sorted(both)
    with pytest.raises(grpc.RpcError) as err:
        rt.ContainerStats(pb.ContainerStatsRequest(container_id="f" * 64), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        rt.ContainerStats(pb.ContainerStatsRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _send_to_pod(w: Workloads, count: int, size: int) -> None:
    """UDP datagrams from the host to the pod's address, over the test's private bridge only."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(b"x" * size, (w.pod_ip, 9))


def _pod_stats(w: Workloads) -> pb.PodSandboxStats:
    request = pb.PodSandboxStatsRequest(pod_sandbox_id=w.pod_id)
    return w.daemon.runtime.PodSandboxStats(request, timeout=30).stats


def test_pod_stats_network_processes_and_containers(workloads: Workloads) -> None:
    before = _pod_stats(workloads)
    _send_to_pod(workloads, 300, 1000)
    after = _pod_stats(workloads)
    assert after.attributes.id == workloads.pod_id
    assert after.attributes.metadata.name == workloads.pod_name
    net_before, net = before.linux.network, after.linux.network
    assert net.default_interface.name == "eth0"
    assert [i.name for i in net.interfaces] == ["eth0"]
    received = net.default_interface.rx_bytes.value - net_before.default_interface.rx_bytes.value
    assert 300 * 1000 <= received <= 300 * 1100 + 10_000, received  # + headers, ARP, IPv6 chatter
    assert net.default_interface.rx_errors.value == 0
    # The pod's cgroup holds both containers: at least the burner's CPU and the holder's memory.
    assert after.linux.cpu.usage_core_nano_seconds.value >= workloads.burn_cpu * 1e9 - 2e9 / TICK
    assert after.linux.memory.working_set_bytes.value >= 64 * MiB
    assert after.linux.cpu.HasField("psi") and after.linux.io.HasField("psi")
    expected = len(_pids(workloads.cgroup_parent, workloads.burn_id)) + len(
        _pids(workloads.cgroup_parent, workloads.hold_id)
    )
    assert after.linux.process.process_count.value == expected >= 2
    assert {c.attributes.id for c in after.linux.containers} == {workloads.burn_id, workloads.hold_id}
    listed = workloads.daemon.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=30).stats
    assert [s.attributes.id for s in listed] == [workloads.pod_id]
    by_label = pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(label_selector={"no": "such"}))
    assert list(workloads.daemon.runtime.ListPodSandboxStats(by_label, timeout=30).stats) == []
    streamed = list(
        workloads.daemon.runtime.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(), timeout=30)
    )
    assert [s.attributes.id for r in streamed for s in r.pod_sandbox_stats] == [workloads.pod_id]
    with pytest.raises(grpc.RpcError) as err:
        workloads.daemon.runtime.PodSandboxStats(
            pb.PodSandboxStatsRequest(pod_sandbox_id="f" * 64), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_pod_sandbox_metrics_match_their_descriptors(workloads: Workloads) -> None:
    rt = workloads.daemon.runtime
    descriptors = {d.name: d for d in rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors}
    for required in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_spec_memory_limit_bytes",
        "container_start_time_seconds",
    ):
        assert required in descriptors
    assert list(descriptors["container_cpu_usage_seconds_total"].label_keys) == [
        "container", "pod", "namespace", "id", "image", "name", "cpu",
    ]  # fmt: skip
    (pod,) = rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
    assert pod.pod_sandbox_id == workloads.pod_id
    every = list(pod.metrics) + [m for c in pod.container_metrics for m in c.metrics]
    for metric in every:
        assert len(metric.label_values) == len(descriptors[metric.name].label_keys), metric.name
    rx = [m for m in pod.metrics if m.name == "container_network_receive_bytes_total"]
    assert [m.label_values[-1] for m in rx] == ["eth0"]
    by_id = {c.container_id: {m.name: m for m in c.metrics} for c in pod.container_metrics}
    hold = by_id[workloads.hold_id]["container_memory_working_set_bytes"]
    assert hold.value.value >= 64 * MiB and hold.metric_type == pb.GAUGE
    assert list(hold.label_values) == [
        "hold", workloads.pod_name, "calyx-test",
        f"{workloads.cgroup_parent}/calyx-{workloads.hold_id}", hold.label_values[4], workloads.hold_id,
    ]  # fmt: skip
    burn = by_id[workloads.burn_id]["container_cpu_usage_seconds_total"]
    assert burn.metric_type == pb.COUNTER and burn.value.value >= int(BURN_SECONDS)
    streamed = list(rt.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest(), timeout=30))
    assert [p.pod_sandbox_id for r in streamed for p in r.pod_sandbox_metrics] == [workloads.pod_id]


def test_metrics_endpoint_serves_cadvisor_series_and_calyx_counters(workloads: Workloads) -> None:
    rx_before = _pod_stats(workloads).linux.network.default_interface.rx_bytes.value
    _stats(workloads, workloads.burn_id)  # at least one ContainerStats call counted
    _send_to_pod(workloads, 50, 500)
    text = scrape(workloads.metrics_port)
    common = {"pod": workloads.pod_name, "namespace": "calyx-test"}
    ((labels, cpu),) = series(text, "container_cpu_usage_seconds_total", container="burn", **common)
    assert labels["cpu"] == "total" and labels["name"] == workloads.burn_id
    assert labels["id"] == f"{workloads.cgroup_parent}/calyx-{workloads.burn_id}"
    assert labels["image"]
    assert workloads.burn_cpu - 2 / TICK <= cpu <= workloads.burn_cpu + 0.3
    ((_, working_set),) = series(text, "container_memory_working_set_bytes", container="hold", **common)
    assert working_set >= 64 * MiB
    ((_, rx),) = series(
        text, "container_network_receive_bytes_total", container="", interface="eth0", **common
    )
    assert rx >= rx_before + 50 * 500
    assert series(text, "container_pressure_cpu_waiting_seconds_total", container="burn", **common)
    assert series(text, "container_pressure_memory_stalled_seconds_total", container="", **common)
    ((_, procs),) = series(text, "container_processes", container="hold", **common)
    assert procs == len(_pids(workloads.cgroup_parent, workloads.hold_id)) >= 1
    ((_, limit),) = series(text, "container_spec_memory_limit_bytes", container="hold", **common)
    assert limit == 0  # unlimited, as cAdvisor shows it
    ((_, started),) = series(text, "container_start_time_seconds", container="burn", **common)
    assert abs(started - time.time()) < 3600
    # Calyx's own: the RPCs this module made, pods and containers by state, runc calls.
    ok = series(text, "calyx_grpc_requests_total", method="ContainerStats", code="OK")
    assert ok and ok[0][1] >= 1
    assert series(text, "calyx_pods", state="READY")[0][1] == 1
    assert series(text, "calyx_containers", state="RUNNING")[0][1] == 2
    assert series(text, "calyx_runc_duration_seconds_count", command="start", outcome="ok")[0][1] >= 2
    assert series(text, "calyx_runc_duration_seconds_count", command="create", outcome="ok")[0][1] >= 2
    assert series(text, "calyx_grpc_request_duration_seconds_count", method="CreateContainer")[0][1] == 2
    # The module's one pull: busybox's blobs (well over 500 kB) downloaded, one successful pull timed.
    assert series(text, "calyx_image_pull_bytes_total")[0][1] > 500_000
    assert series(text, "calyx_image_pull_duration_seconds_count", outcome="ok")[0][1] == 1


class Prometheus:
    """Debian's Prometheus, started on loopback with a scrape config derived from deploy/prometheus.yml."""

    def __init__(self, base: Path, target_port: int) -> None:
        config = DEPLOY_SCRAPE_CONFIG.read_text()
        assert "127.0.0.1:9099" in config and "scrape_interval: 15s" in config
        config = config.replace("127.0.0.1:9099", f"127.0.0.1:{target_port}")
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
        (base / "prometheus.yml").write_text(config)
        self.port = free_port()
        self.log = open(base / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={base / 'prometheus.yml'}",
                f"--storage.tsdb.path={base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=base,
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read().decode()) if path.startswith("/api") else response.read()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        try:
            self.get("/-/ready")
            return True
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.mark.skipif(not os.access(PROMETHEUS, os.X_OK), reason="Debian's prometheus is not installed")
def test_a_real_prometheus_scrapes_calyx(workloads: Workloads, short_tmp: Path) -> None:
    prometheus = Prometheus(short_tmp, workloads.metrics_port)
    try:
        wait_for(prometheus.ready, "prometheus to be ready", 60)
        selector = f'{{container="hold",pod="{workloads.pod_name}",namespace="calyx-test"}}'
        (found,) = wait_for(
            lambda: prometheus.query(f"container_memory_working_set_bytes{selector}"), "the first scrape", 60
        )
        labels = found["metric"]
        assert labels["id"] == f"{workloads.cgroup_parent}/calyx-{workloads.hold_id}"
        assert labels["name"] == workloads.hold_id
        assert labels["image"]
        assert labels["job"] == "calyx"
        assert float(found["value"][1]) >= 64 * MiB
        cpu_selector = f'{{container="burn",pod="{workloads.pod_name}",cpu="total"}}'
        (cpu,) = prometheus.query(f"container_cpu_usage_seconds_total{cpu_selector}")
        assert float(cpu["value"][1]) >= BURN_SECONDS
        (up,) = prometheus.query('up{job="calyx"}')
        assert up["value"][1] == "1"
        pods = prometheus.query('calyx_pods{state="READY"}')
        assert [p["value"][1] for p in pods] == ["1"]
    finally:
        prometheus.stop()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_metrics_endpoint_is_off_when_disabled_and_a_busy_port_does_not_stop_the_daemon(
    daemon_factory,
) -> None:
    port = free_port()
    off = daemon_factory({"metrics": {"enabled": False, "port": port}})
    assert not _listening(port)
    off.stop()
    on = daemon_factory({"metrics": {"enabled": True, "port": port}})
    text = scrape(port)
    assert "calyx_grpc_requests_total" in text and "calyx_pods" in text
    # A second daemon wanting the same port serves CRI anyway and says why it has no metrics.
    second = daemon_factory({"metrics": {"enabled": True, "port": port}})
    second.runtime.Version(pb.VersionRequest(), timeout=10)
    assert "cannot serve metrics" in second.log()
    on.stop()
    assert not _listening(port)  # the endpoint goes away with its daemon


def test_pod_without_cgroup_parent_sums_its_containers_and_a_stopped_pod_has_no_readings(
    workloads: Workloads, image_registry: LoopbackRegistry
) -> None:
    d = workloads.daemon
    pod = pod_config(log_directory=str(d.base / "logs2"))  # no cgroup_parent: the shared default parent
    pod_id = run_pod(d, pod)
    try:
        image = image_registry.ref("calyx-test/busybox:1.35")
        cid = _container(d, pod_id, pod, image, "idle", "sleep 3600; true")
        stats = _pod_stats_of(d, pod_id)
        (container,) = stats.linux.containers
        assert container.attributes.id == cid
        # Summed from the one container's sample of the same call: equal, not merely close.
        assert stats.linux.cpu.usage_core_nano_seconds.value == container.cpu.usage_core_nano_seconds.value
        assert stats.linux.memory.working_set_bytes.value == container.memory.working_set_bytes.value
        assert stats.linux.process.process_count.value >= 1
        assert stats.linux.network.default_interface.name == "eth0"
        d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        stopped = _pod_stats_of(d, pod_id)
        assert stopped.attributes.id == pod_id
        for part in ("cpu", "memory", "network", "process"):
            assert not stopped.linux.HasField(part), part
        (exited,) = stopped.linux.containers
        assert exited.attributes.id == cid and not exited.HasField("cpu")
        text = scrape(workloads.metrics_port)
        assert series(text, "calyx_pods", state="NOTREADY")[0][1] == 1
        assert series(text, "calyx_containers", state="EXITED")[0][1] == 1
        assert not series(text, "container_memory_usage_bytes", container="idle")  # running ones only
        # Pod metrics are for ready pods only.
        listed = d.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30).pod_metrics
        assert [p.pod_sandbox_id for p in listed] == [workloads.pod_id]
    finally:
        d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


def _pod_stats_of(d: Daemon, pod_id: str) -> pb.PodSandboxStats:
    return d.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30).stats


def test_cni_plugin_calls_are_timed_on_metrics(cni_net) -> None:
    net = cni_net(start=False)
    port = free_port()
    table = tomllib.loads(net.daemon.config_file.read_text())
    table["metrics"] = {"enabled": True, "address": "127.0.0.1", "port": port}
    net.daemon.config_file.write_text(tomli_w.dumps(table))
    net.daemon.start()
    pod_id = run_pod(net.daemon, pod_config())
    text = scrape(port)
    for plugin in ("bridge", "portmap"):
        (count,) = series(
            text, "calyx_cni_duration_seconds_count", plugin=plugin, command="ADD", outcome="ok"
        )
        assert count[1] == 1
    # The pod's own network, read through its netns, is the CNI bridge's veth.
    stats = net.daemon.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert stats.linux.network.default_interface.name == "eth0"
    net.daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    text = scrape(port)
    assert series(text, "calyx_cni_duration_seconds_count", plugin="bridge", command="DEL", outcome="ok")


def test_stats_and_the_endpoint_come_back_after_a_daemon_restart(workloads: Workloads) -> None:
    workloads.daemon.restart()
    stats = _stats(workloads, workloads.hold_id)
    assert stats.memory.working_set_bytes.value >= 64 * MiB
    text = scrape(workloads.metrics_port)  # the same port, bound again by the new process
    assert series(text, "container_memory_working_set_bytes", container="hold")
    assert series(text, "calyx_containers", state="RUNNING")[0][1] == 2


def test_concurrent_stats_calls_and_scrapes_all_succeed(workloads: Workloads) -> None:
    import threading

    errors: list[BaseException] = []
    rt = workloads.daemon.runtime

    def calls(kind: int) -> None:
        try:
            for _ in range(15):
                if kind == 0:
                    assert len(rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=60).stats) == 2
                elif kind == 1:
                    (pod,) = rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=60).stats
                    assert pod.linux.network.default_interface.name == "eth0"
                elif kind == 2:
                    assert "container_cpu_usage_seconds_total" in scrape(workloads.metrics_port)
                else:
                    (pod,) = rt.ListPodSandboxMetrics(
                        pb.ListPodSandboxMetricsRequest(), timeout=60
                    ).pod_metrics
                    assert len(pod.container_metrics) == 2
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=calls, args=(i % 4,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    assert "unreadable" not in workloads.daemon.log()  # no sample failed under the concurrent load
