"""Pod sandbox lifecycle through the CRI API: a real daemon, real namespaces, the built-in network."""

from __future__ import annotations

import os
import re
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import cgroup_files
from tests.net_fixtures import (
    Net,
    free_port,
    host_network_linux,
    info,
    pod_config,
    pod_traces,
    run_pod,
    sh,
    status,
    stop_remove,
)


def _code(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kw)
    return err.value


def _list(net: Net, **flt) -> list[pb.PodSandbox]:
    request = (
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**flt)) if flt else pb.ListPodSandboxRequest()
    )
    return list(net.daemon.runtime.ListPodSandbox(request).items)


def test_run_reports_metadata_labels_annotations_as_given(builtin_net) -> None:
    net = builtin_net()
    config = pod_config("web", labels={"app": "web", "tier": "1"}, annotations={"note": "a=b, c"})
    pod_id = run_pod(net.daemon, config)
    assert len(pod_id) == 64 and all(c in "0123456789abcdef" for c in pod_id)
    st = status(net.daemon, pod_id).status
    assert st.id == pod_id
    assert st.state == pb.SANDBOX_READY
    assert st.metadata == config.metadata
    assert dict(st.labels) == {"app": "web", "tier": "1"}
    assert dict(st.annotations) == {"note": "a=b, c"}
    assert st.runtime_handler == "runc"
    assert st.created_at > 0
    assert st.linux.namespaces.options.network == pb.POD
    (item,) = _list(net)
    assert item.id == pod_id and item.metadata == config.metadata and dict(item.labels) == dict(st.labels)
    assert item.state == pb.SANDBOX_READY
    # a unique prefix names the pod too
    assert status(net.daemon, pod_id[:10]).status.id == pod_id


def test_stop_and_remove_are_idempotent_and_unknown_ids_are_not_errors(builtin_net) -> None:
    net = builtin_net()
    rt = net.daemon.runtime
    pod_id = run_pod(net.daemon, pod_config())
    for _ in range(2):
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert status(net.daemon, pod_id).status.state == pb.SANDBOX_NOTREADY
    for _ in range(2):
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="f" * 64))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))
    err = _code(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert _list(net) == []
    assert pod_traces(net.daemon, pod_id) == []


def test_same_name_namespace_uid_attempt_is_already_exists_until_removed(builtin_net) -> None:
    net = builtin_net()
    config = pod_config()
    first = run_pod(net.daemon, config)
    err = _code(run_pod, net.daemon, config)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in err.details()
    assert len(_list(net)) == 1
    retry = pb.PodSandboxConfig()
    retry.CopyFrom(config)
    retry.metadata.attempt = 1
    second = run_pod(net.daemon, retry)  # a new attempt is a new pod
    stop_remove(net.daemon, first)
    third = run_pod(net.daemon, config)  # the name is free again
    assert len({first, second, third}) == 3


def test_list_filters_by_id_prefix_state_and_labels(builtin_net) -> None:
    net = builtin_net()
    a = run_pod(net.daemon, pod_config(labels={"app": "a", "env": "test"}))
    b = run_pod(net.daemon, pod_config(labels={"app": "b", "env": "test"}))
    net.daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=b))
    assert [p.id for p in _list(net, id=a)] == [a]
    assert [p.id for p in _list(net, id=a[:8])] == [a]
    assert _list(net, id="0" * 64) == []
    ready = pb.PodSandboxStateValue(state=pb.SANDBOX_READY)
    notready = pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)
    assert [p.id for p in _list(net, state=ready)] == [a]
    assert [p.id for p in _list(net, state=notready)] == [b]
    assert {p.id for p in _list(net, label_selector={"env": "test"})} == {a, b}
    assert [p.id for p in _list(net, label_selector={"env": "test", "app": "b"})] == [b]
    assert _list(net, label_selector={"app": "c"}) == []
    streamed = [
        p.id
        for response in net.daemon.runtime.StreamPodSandboxes(pb.StreamPodSandboxesRequest())
        for p in response.pod_sandboxes
    ]
    assert sorted(streamed) == sorted([a, b])


def test_unknown_runtime_handler_is_invalid_argument_and_leaves_nothing(builtin_net) -> None:
    net = builtin_net()
    err = _code(run_pod, net.daemon, pod_config(), handler="nope")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in err.details()
    assert _list(net) == []
    assert not any((net.daemon.run_root / "ns" / "net").glob("*"))


def test_hostname_and_dns_files_and_uts_namespace(builtin_net) -> None:
    net = builtin_net()
    dns = pb.DNSConfig(
        servers=["10.96.0.10", "fd00::a"], searches=["ns.svc.cluster.local", "svc"], options=["ndots:5"]
    )
    pod_id = run_pod(net.daemon, pod_config(hostname="web-0", dns_config=dns))
    files = info(net.daemon, pod_id)["files"]
    assert Path(files["hostname"]).read_text() == "web-0\n"
    assert Path(files["resolv.conf"]).read_text() == (
        "nameserver 10.96.0.10\nnameserver fd00::a\nsearch ns.svc.cluster.local svc\noptions ndots:5\n"
    )
    ip = status(net.daemon, pod_id).status.network.ip
    hosts = Path(files["hosts"]).read_text()
    assert "127.0.0.1\tlocalhost" in hosts
    assert f"{ip}\tweb-0" in hosts
    uts = info(net.daemon, pod_id)["namespaces"]["uts"]
    assert sh("nsenter", f"--uts={uts}", "hostname").stdout.strip() == "web-0"
    assert sh("hostname").stdout.strip() != "web-0"


def test_resolv_conf_is_the_hosts_without_dns_config(builtin_net) -> None:
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config())
    assert (
        Path(info(net.daemon, pod_id)["files"]["resolv.conf"]).read_text()
        == Path("/etc/resolv.conf").read_text()
    )


@pytest.mark.parametrize(
    "dns",
    [
        pb.DNSConfig(servers=["not-an-ip"]),
        pb.DNSConfig(searches=["a\nnameserver 6.6.6.6"]),
        pb.DNSConfig(options=["ndots:1 rotate"]),
    ],
)
def test_bad_dns_config_is_invalid_argument(builtin_net, dns: pb.DNSConfig) -> None:
    net = builtin_net()
    err = _code(run_pod, net.daemon, pod_config(dns_config=dns))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _list(net) == []


def test_namespaced_sysctls_are_applied_inside_the_pod_only(builtin_net) -> None:
    net = builtin_net()
    host_somaxconn = Path("/proc/sys/net/core/somaxconn").read_text()
    host_shmmni = Path("/proc/sys/kernel/shmmni").read_text()
    linux = pb.LinuxPodSandboxConfig(sysctls={"net.core.somaxconn": "777", "kernel.shmmni": "1234"})
    pod_id = run_pod(net.daemon, pod_config(linux=linux))
    ns = info(net.daemon, pod_id)["namespaces"]
    assert (
        sh("nsenter", f"--net={ns['network']}", "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "777"
    )
    assert sh("nsenter", f"--ipc={ns['ipc']}", "cat", "/proc/sys/kernel/shmmni").stdout.strip() == "1234"
    assert Path("/proc/sys/net/core/somaxconn").read_text() == host_somaxconn
    assert Path("/proc/sys/kernel/shmmni").read_text() == host_shmmni


@pytest.mark.parametrize(
    ("sysctls", "host_net"),
    [
        ({"kernel.core_pattern": "|/tmp/x"}, False),  # not namespaced
        ({"vm.swappiness": "1"}, False),
        ({"net.core.somaxconn": "1+kernel.core_pattern=|/tmp/x"}, False),  # injection
        ({"net.core.somaxconn": "1\nkernel.core_pattern=x"}, False),
        ({"net.core.somaxconn": "1"}, True),  # the pod uses the host's netns
    ],
)
def test_forbidden_sysctls_are_invalid_argument_and_leave_nothing(builtin_net, sysctls, host_net) -> None:
    net = builtin_net()
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    linux = host_network_linux() if host_net else pb.LinuxPodSandboxConfig()
    linux.sysctls.update(sysctls)
    err = _code(run_pod, net.daemon, pod_config(linux=linux))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _list(net) == []
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern
    assert not any((net.daemon.run_root / "ns" / "net").glob("*"))


def test_cgroup_parent_in_the_other_drivers_syntax_is_invalid_argument(builtin_net) -> None:
    net = builtin_net()  # cgroupfs driver
    err = _code(
        run_pod,
        net.daemon,
        pod_config(linux=pb.LinuxPodSandboxConfig(cgroup_parent="kubepods-besteffort-podx.slice")),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    sysd = builtin_net(config={"cgroup": {"driver": "systemd"}})
    err = _code(
        run_pod, sysd.daemon, pod_config(linux=pb.LinuxPodSandboxConfig(cgroup_parent="/kubepods/podx"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _list(net) == [] and _list(sysd) == []


def test_cgroupfs_parent_is_recorded_and_removed_with_the_pod(builtin_net) -> None:
    net = builtin_net()
    parent = f"/cxtest-pod{os.getpid()}"
    linux = pb.LinuxPodSandboxConfig(cgroup_parent=parent)
    pod_id = run_pod(net.daemon, pod_config(linux=linux))
    assert info(net.daemon, pod_id)["cgroupParent"] == parent
    made = cgroup_files.controller_dir("memory", parent)
    assert made.is_dir()
    stop_remove(net.daemon, pod_id)
    assert not made.exists()


def test_shared_pid_namespace_is_held_by_catatonit_until_stop(builtin_net) -> None:
    net = builtin_net()
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    pod_id = run_pod(net.daemon, pod_config(linux=linux))
    details = info(net.daemon, pod_id)
    holder = details["pidHolder"]
    assert Path(f"/proc/{holder}/comm").read_text().strip() == "catatonit"
    pin = details["namespaces"]["pid"]
    # a process entering the pod's PID namespace sees catatonit as PID 1
    out = sh("nsenter", f"--pid={pin}", "--", "sh", "-c", "echo $$").stdout.strip()
    assert out != "1" and int(out) > 1
    net.daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert (
        not Path(f"/proc/{holder}").exists()
        or Path(f"/proc/{holder}/comm").read_text().strip() != "catatonit"
    )
    assert not Path(pin).exists()
    stop_remove(net.daemon, pod_id)
    assert "holder exited" not in net.daemon.log()  # our own stop is not mistaken for a death


def test_container_pid_mode_has_no_holder(builtin_net) -> None:
    net = builtin_net()
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(pid=pb.CONTAINER)
        )
    )
    pod_id = run_pod(net.daemon, pod_config(linux=linux))
    details = info(net.daemon, pod_id)
    assert details["namespaces"]["pid"] is None and details["pidHolder"] is None


def test_host_network_pod_gets_no_namespace_and_no_ip(builtin_net) -> None:
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config(linux=host_network_linux()))
    st = status(net.daemon, pod_id).status
    assert st.network.ip == "" and not st.network.additional_ips
    assert st.linux.namespaces.options.network == pb.NODE
    assert st.linux.namespaces.options.ipc == pb.NODE
    details = info(net.daemon, pod_id)
    assert details["namespaces"]["network"] is None and details["namespaces"]["uts"] is None
    assert not (net.daemon.run_root / "ns" / "net" / pod_id).exists()
    assert net.leases == {}
    assert sh("ip", "link", "show", f"cxv{pod_id[:12]}", check=False).returncode != 0
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []


def test_verbose_status_info_is_json_with_namespaces_network_and_config(builtin_net) -> None:
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config("verbose", labels={"x": "y"}))
    details = info(net.daemon, pod_id)
    assert details["id"] == pod_id
    assert details["config"]["metadata"]["name"] == "verbose"
    assert details["config"]["labels"] == {"x": "y"}
    assert details["network"]["kind"] == "bridge" and details["network"]["bridge"] == net.bridge
    assert details["namespaces"]["network"] == str(net.daemon.run_root / "ns" / "net" / pod_id)
    assert not status(net.daemon, pod_id).info  # not verbose: no info


def test_ready_pod_survives_a_daemon_restart_and_stops_after_it(builtin_net) -> None:
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config(labels={"keep": "1"}))
    ip = status(net.daemon, pod_id).status.network.ip
    net.daemon.restart()
    st = status(net.daemon, pod_id).status
    assert st.state == pb.SANDBOX_READY and st.network.ip == ip and dict(st.labels) == {"keep": "1"}
    err = _code(run_pod, net.daemon, pod_config(st.metadata.name, **{}).__class__(metadata=st.metadata))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS  # the name index was rebuilt too
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []
    assert net.leases == {}


@pytest.mark.parametrize("failpoint", ["pod.after_intent", "pod.after_netns", "pod.after_network"])
def test_kill9_during_run_is_cleaned_up_at_restart(builtin_net, failpoint: str) -> None:
    net = builtin_net(env={"CALYX_FAILPOINTS": f"{failpoint}=kill"})
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    config = pod_config(
        linux=linux, port_mappings=[pb.PortMapping(container_port=80, host_port=18000 + os.getpid() % 1000)]
    )
    err = _code(run_pod, net.daemon, config)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert net.daemon.proc is not None and net.daemon.proc.wait(60) == -9
    records = net.records("pod")
    (pod_id,) = records  # the intent was recorded before the kill
    assert records[pod_id]["complete"] is False
    if failpoint != "pod.after_intent":
        assert (net.daemon.run_root / "ns" / "net" / pod_id).exists()  # something for recovery to clean
    net.daemon.env.pop("CALYX_FAILPOINTS")
    net.daemon.start()
    assert _list(net) == []
    assert pod_traces(net.daemon, pod_id) == []
    assert net.leases == {}
    assert net.records("pod") == {}
    assert pod_id[:16] not in sh("iptables-save").stdout  # the network's chains stay; the pod's went
    run_pod(net.daemon, config)  # the name is free


def test_failure_late_in_run_undoes_every_step(builtin_net) -> None:
    net = builtin_net(env={"CALYX_FAILPOINTS": "pod.after_network=error"})
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    err = _code(
        run_pod,
        net.daemon,
        pod_config(linux=linux, port_mappings=[pb.PortMapping(container_port=80, host_port=18999)]),
    )
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "pod.after_network" in err.details()
    (pod_id,) = re.findall(r"failpoint hit.*?pod_id=([0-9a-f]{64})", net.daemon.log())
    assert _list(net) == []
    assert net.records("pod") == {}
    assert pod_traces(net.daemon, pod_id) == []
    assert not any((net.daemon.run_root / "ns").glob("*/*"))
    assert net.leases == {}
    assert pod_id[:16] not in sh("iptables-save").stdout  # the pod's hostPort chain went


def test_log_directory_is_created_and_overhead_and_resources_are_recorded(
    builtin_net, short_tmp: Path
) -> None:
    net = builtin_net()
    logs = short_tmp / "logs" / "calyx-test_web_uid"
    linux = pb.LinuxPodSandboxConfig(
        overhead=pb.LinuxContainerResources(cpu_shares=64, memory_limit_in_bytes=1 << 20),
        resources=pb.LinuxContainerResources(cpu_quota=50000, cpu_period=100000),
    )
    pod_id = run_pod(net.daemon, pod_config(log_directory=str(logs), linux=linux))
    assert logs.is_dir()
    config = info(net.daemon, pod_id)["config"]
    assert config["log_directory"] == str(logs)
    assert config["linux"]["overhead"] == {"cpu_shares": "64", "memory_limit_in_bytes": "1048576"}
    assert config["linux"]["resources"]["cpu_quota"] == "50000"
    err = _code(run_pod, net.daemon, pod_config(log_directory="relative/dir"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pid_holder_killed_while_the_daemon_was_down_makes_the_pod_not_ready(builtin_net) -> None:
    net = builtin_net()
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    pod_id = run_pod(net.daemon, pod_config(linux=linux))
    holder = info(net.daemon, pod_id)["pidHolder"]
    net.daemon.stop()
    os.kill(holder, 9)
    net.daemon.start()
    assert status(net.daemon, pod_id).status.state == pb.SANDBOX_NOTREADY
    assert not (net.daemon.run_root / "ns" / "net" / pod_id).exists()
    assert net.leases == {}
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []


def test_pid_holder_dying_while_the_daemon_runs_stops_the_pod(builtin_net) -> None:
    """Watched through a pidfd: also for holders started before a daemon restart."""
    import time

    net = builtin_net()
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    pods = [run_pod(net.daemon, pod_config(linux=linux)) for _ in range(2)]
    for round, pod_id in enumerate(pods):
        if round == 1:
            net.daemon.restart()  # the second holder is watched by the restarted daemon (from recovery)
        os.kill(info(net.daemon, pod_id)["pidHolder"], 9)
        deadline = time.monotonic() + 60  # waiting for the event, not asserting a duration
        while status(net.daemon, pod_id).status.state != pb.SANDBOX_NOTREADY and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(net.daemon, pod_id).status.state == pb.SANDBOX_NOTREADY
        assert not (net.daemon.run_root / "ns" / "net" / pod_id).exists()
        assert not (net.daemon.run_root / "ns" / "pid" / pod_id).exists()
    assert net.leases == {}
    assert net.daemon.log().count("holder exited") == 2


@pytest.mark.parametrize("network", ["builtin", "cni"])
def test_kill9_during_stop_is_finished_by_the_retried_stop(builtin_net, cni_net, network: str) -> None:
    env = {"CALYX_FAILPOINTS": "pod.stop_after_network=kill"}
    net = builtin_net(env=env) if network == "builtin" else cni_net(env=env)
    pod_id = run_pod(
        net.daemon, pod_config(port_mappings=[pb.PortMapping(container_port=80, host_port=free_port())])
    )
    err = _code(net.daemon.runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    net.daemon.env.pop("CALYX_FAILPOINTS")
    net.daemon.start()
    stop_remove(net.daemon, pod_id)  # kubelet retries the stop, then removes
    assert pod_traces(net.daemon, pod_id) == []
    assert net.records("pod") == {}
    assert net.leases == {}
    assert _list(net) == []
    if net.ipam_dir is not None:  # host-local's leases of the CNI network
        assert [p.name for p in net.ipam_dir.iterdir() if p.name[0].isdigit()] == []
