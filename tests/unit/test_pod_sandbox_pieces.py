"""The kernel-facing pod pieces on their own: namespace pins, the PID holder, pod files, sysctl and
cgroup_parent checks, CNI config loading and plugin input, and the built-in network's IPAM."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from calyx_base.errors import InvalidArgument, ResourceExhausted
from cri.store import Store
from sandbox import namespaces, pidns, podfiles, sysctls
from sandbox.bridge.ipam import IPAM
from sandbox.cgroups import names
from sandbox.cni.config import ConfigError, find_config, from_dict, load
from sandbox.cni.invoke import plugin_stdin
from sandbox.cni.network import PodRef, result_ips

# --- namespaces and the PID holder ------------------------------------------------------------------


def test_pins_are_mounted_nsfs_with_the_hostname_and_release_is_idempotent(short_tmp: Path) -> None:
    import socket

    before = {kind: Path(f"/proc/thread-self/ns/{kind}").stat().st_ino for kind in ("net", "ipc", "uts")}
    host = socket.gethostname()
    pins = namespaces.create(short_tmp, "p1", ["net", "ipc", "uts"], "pod-host")
    assert set(pins) == {"net", "ipc", "uts"}
    for kind, path in pins.items():
        assert namespaces.is_pinned(path)
        assert path.stat().st_ino != before[kind]  # a new namespace, not the host's
        # The thread that asked is still in the host's (only the short-lived pinning thread moved).
        assert Path(f"/proc/thread-self/ns/{kind}").stat().st_ino == before[kind]
    assert socket.gethostname() == host
    hostname = subprocess.run(["nsenter", f"--uts={pins['uts']}", "hostname"], capture_output=True, text=True)
    assert hostname.stdout.strip() == "pod-host"
    namespaces.release_pod(short_tmp, "p1")
    namespaces.release_pod(short_tmp, "p1")
    for path in pins.values():
        assert not path.exists() and not namespaces.is_pinned(path)
    assert str(short_tmp) not in Path("/proc/self/mountinfo").read_text()


def test_failed_pinning_leaves_no_pin(short_tmp: Path) -> None:
    with pytest.raises(Exception, match="hostname"):
        namespaces.create(short_tmp, "p2", ["net", "uts"], "-bad host name-" * 10)
    assert not any((short_tmp / "ns").glob("*/*"))
    assert str(short_tmp) not in Path("/proc/self/mountinfo").read_text()


def test_pid_holder_is_catatonit_as_pid_1_and_release_kills_it(short_tmp: Path) -> None:
    pin = pidns.start_holder(short_tmp, "p3")
    try:
        (pid,) = pidns.holder_pids(pin)
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "catatonit"
        status = Path(f"/proc/{pid}/status").read_text()
        ns_pids = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[1:]
        assert ns_pids[-1] == "1"  # PID 1 inside its namespace
    finally:
        pidns.release(pin)  # also when an assertion failed: no holder may outlive the test
    assert pidns.holder_pids(pin) == []
    assert not pin.exists()
    pidns.release(pin)  # idempotent


# --- pod files ----------------------------------------------------------------------------------------


def test_pod_files_from_dns_config(short_tmp: Path) -> None:
    dns = podfiles.DNS(["10.0.0.10"], ["a.svc", "svc"], ["ndots:5", "edns0"])
    files = podfiles.write(short_tmp / "pod", "h1", dns, [])
    assert files.resolv_conf.read_text() == "nameserver 10.0.0.10\nsearch a.svc svc\noptions ndots:5 edns0\n"
    assert files.hostname.read_text() == "h1\n"
    podfiles.write_hosts(short_tmp / "pod", "h1", ["10.1.2.3"])
    hosts = files.hosts.read_text()
    assert hosts.startswith("127.0.0.1\tlocalhost\n") and "10.1.2.3\th1\n" in hosts


@pytest.mark.parametrize(
    "dns",
    [
        podfiles.DNS(servers=["1.2.3.4\nnameserver 6.6.6.6"]),
        podfiles.DNS(searches=["ok", "bad domain"]),
        podfiles.DNS(options=["x#y"]),
        podfiles.DNS(searches=[""]),
    ],
)
def test_dns_values_that_could_add_lines_are_refused(dns: podfiles.DNS) -> None:
    with pytest.raises(InvalidArgument):
        podfiles.validate_dns(dns)


@pytest.mark.parametrize("name", ["", "-x", "a_b", "a" * 65, "a..b", "x\ny", "host\n"])
def test_bad_hostnames_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        podfiles.validate_hostname(name)


# --- sysctls ------------------------------------------------------------------------------------------


def test_namespaced_sysctls_are_accepted() -> None:
    ok = {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net/core/somaxconn": "1024",
        "kernel.shmmax": "1000000",
        "kernel.msgmax": "8192",
        "kernel.sem": "250 32000 32 128",
        "fs.mqueue.msg_max": "20",
        "net.ipv4.ip_local_port_range": "1024 65000",
    }
    sysctls.validate(ok, own_net=True, own_ipc=True)


@pytest.mark.parametrize(
    ("name", "value", "own_net", "own_ipc", "reason"),
    [
        ("kernel.core_pattern", "x", True, True, "not namespaced"),
        ("vm.overcommit_memory", "1", True, True, "not namespaced"),
        ("kernel.hostname", "x", True, True, "not namespaced"),
        ("net.core.somaxconn", "1+kernel.core_pattern=|/x", True, True, "second assignment"),
        ("net.core.somaxconn", "1=2", True, True, "second assignment"),
        ("net.core.somaxconn", "1\n", True, True, "second assignment"),
        ("net.core.../../kernel/core_pattern", "1", True, True, "not valid"),
        ("net.core.somaxconn", "1", False, True, "network namespace"),
        ("kernel.shmmax", "1", True, False, "IPC namespace"),
    ],
)
def test_other_sysctls_are_refused(name, value, own_net, own_ipc, reason) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        sysctls.validate({name: value}, own_net=own_net, own_ipc=own_ipc)


# --- cgroup parent ------------------------------------------------------------------------------------

# What each driver's validate_parent runs (sandbox/cgroups/cgroupfs.py, systemd.py).
PARENT_CHECK = {"systemd": names.slice_unit, "cgroupfs": names.check_path}


@pytest.mark.parametrize(
    ("driver", "parent"),
    [
        ("systemd", "kubepods-besteffort-pod1234_5678.slice"),
        ("systemd", "kubepods.slice"),
        ("systemd", "/test.slice"),
        ("systemd", "/kubepods.slice/kubepods-besteffort.slice"),
        ("cgroupfs", "/kubepods/besteffort/pod1234-5678"),
        ("cgroupfs", "/kubepods"),
    ],
)
def test_cgroup_parent_in_the_drivers_syntax_is_accepted(driver: str, parent: str) -> None:
    PARENT_CHECK[driver](parent)


@pytest.mark.parametrize(
    ("driver", "parent"),
    [
        ("systemd", "/kubepods/besteffort/pod1"),
        ("systemd", "kubepods-besteffort"),
        ("systemd", "kubepods--x.slice"),
        ("systemd", "/test.slice/../x.slice"),
        ("cgroupfs", "kubepods-besteffort-pod1.slice"),
        ("cgroupfs", "kubepods/besteffort"),
        ("cgroupfs", "/kubepods/../etc"),
    ],
)
def test_cgroup_parent_in_the_wrong_syntax_is_refused(driver: str, parent: str) -> None:
    with pytest.raises(InvalidArgument):
        PARENT_CHECK[driver](parent)


# --- CNI ----------------------------------------------------------------------------------------------


def test_first_config_by_name_is_used_and_a_single_conf_becomes_a_list(short_tmp: Path) -> None:
    (short_tmp / "20-b.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "x"}]})
    )
    (short_tmp / "10-a.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "a", "type": "bridge", "k": 1})
    )
    (short_tmp / "00-ignored.txt").write_text("{}")
    path = find_config(short_tmp)
    assert path is not None and path.name == "10-a.conf"
    netlist = load(path)
    assert netlist.name == "a" and netlist.cni_version == "0.4.0"
    assert netlist.plugins == [{"type": "bridge", "k": 1}]
    assert find_config(short_tmp / "missing") is None


@pytest.mark.parametrize(
    "raw",
    [
        {"cniVersion": "2.0.0", "name": "n", "plugins": [{"type": "x"}]},
        {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]},
        {"cniVersion": "1.0.0", "name": "n", "plugins": []},
        {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]},
        {"cniVersion": "1.0.0", "name": "n"},
    ],
)
def test_unusable_cni_configs_are_refused(raw: dict) -> None:
    with pytest.raises(ConfigError):
        from_dict(raw, "test")


def test_plugin_stdin_passes_only_declared_capabilities_and_prev_result() -> None:
    pod = PodRef(
        "id1", "web", "ns", "uid",
        "/n",
        [{"host_port": 80, "container_port": 8080, "protocol": "tcp", "host_ip": ""},
         {"host_port": 0, "container_port": 9, "protocol": "udp", "host_ip": ""}],
    )  # fmt: skip
    assert pod.capability_args == {
        "portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]
    }
    with_cap = json.loads(
        plugin_stdin(
            {"type": "portmap", "capabilities": {"portMappings": True}},
            "net",
            "1.0.0",
            {"ips": []},
            pod.capability_args,
        )
    )
    assert with_cap["runtimeConfig"]["portMappings"][0]["hostPort"] == 80
    assert (
        with_cap["prevResult"] == {"ips": []}
        and with_cap["name"] == "net"
        and with_cap["cniVersion"] == "1.0.0"
    )
    without = json.loads(plugin_stdin({"type": "bridge"}, "net", "1.0.0", None, pod.capability_args))
    assert "runtimeConfig" not in without and "prevResult" not in without
    assert "K8S_POD_INFRA_CONTAINER_ID=id1" in pod.cni_args.split(";")


def test_result_ips_lists_ipv4_first() -> None:
    result = {"ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/24"}]}
    assert result_ips(result) == ["10.1.0.5", "fd00::5"]
    assert result_ips(None) == []


# --- IPAM -----------------------------------------------------------------------------------------------


def test_ipam_leases_are_unique_persisted_and_released(short_tmp: Path) -> None:
    store = Store(short_tmp / "db")
    ipam = IPAM(store)
    subnet = ipaddress.IPv4Network("10.9.0.0/29")  # 6 hosts: the gateway and 5 pods
    got = [ipam.allocate(subnet, f"pod{i}", "br") for i in range(5)]
    assert [str(a.ip) for a in got] == [f"10.9.0.{i}" for i in range(2, 7)]
    assert ipam.allocate(subnet, "pod0", "br") == got[0]  # the same pod keeps its address
    with pytest.raises(ResourceExhausted):
        ipam.allocate(subnet, "pod5", "br")
    store.close()
    store = Store(short_tmp / "db")  # a restart keeps the leases
    ipam = IPAM(store)
    assert ipam.of_pod("pod3") == ["10.9.0.5"]
    assert ipam.release("pod3") == ["10.9.0.5"]
    assert ipam.allocate(subnet, "pod9", "br").ip == ipaddress.IPv4Address("10.9.0.5")
    store.close()


# --- iptables rules of the built-in network --------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_bridge_rules_are_made_once_found_whole_and_removed_even_when_half_gone(version: int) -> None:
    """Against the real iptables/ip6tables: the network's chains made from what iptables-save lacks are
    then found whole (our rules compare equal to what iptables-save prints, so nothing is ever added
    twice); a pod's rules go in and out in one transaction each, also when someone removed half of them;
    the removal takes every chain of the bridge and leaves another bridge's alone."""
    from sandbox.bridge import iptables
    from sandbox.bridge.iptables import BridgeRules, pod_chain
    from tests.net_fixtures import _drop_chains

    def saved_text() -> str:
        return subprocess.run([f"{iptables.BINARIES[version]}-save"], capture_output=True, text=True).stdout

    n = os.getpid() % 100000
    bridge, other = f"cxu{n}", f"cxw{n}"
    subnet = ipaddress.ip_network("10.247.1.0/24" if version == 4 else "fd42:247:1::/64")
    ip = str(subnet.network_address + 5)
    rules, others = BridgeRules(bridge, version), BridgeRules(other, version)
    pod_id = "ab" * 32
    try:
        for r in (rules, others):
            lines = r.missing(iptables.save(version), [subnet])
            assert lines["nat"] and lines["filter"]
            iptables.restore(version, lines)
        assert rules.missing(iptables.save(version), [subnet]) == {"nat": [], "filter": []}
        mappings = [
            {"host_port": 31001, "container_port": 80, "protocol": "tcp", "host_ip": ""},
            {"host_port": 31002, "container_port": 53, "protocol": "udp", "host_ip": "127.0.0.1"},
            {"host_port": 31003, "container_port": 1, "protocol": "tcp", "host_ip": "fd00::1"},
            {"host_port": 0, "container_port": 2, "protocol": "tcp", "host_ip": ""},  # no host port
        ]
        rules.add_pod(pod_id, ip, mappings)
        saved = saved_text()
        target = ip if version == 4 else f"[{ip}]"
        assert f"-p tcp -m tcp --dport 31001 -j DNAT --to-destination {target}:80" in saved
        assert ("--dport 31002" in saved) == (version == 4)  # a host_ip of the other family: not here
        assert ("--dport 31003" in saved) == (version == 6)
        assert saved.count(f"-A CALYX-HP-{bridge} ") == 1
        rules.remove_pod(pod_id)  # one transaction
        assert pod_chain(pod_id) not in saved_text()
        rules.add_pod(pod_id, ip, mappings)
        # someone deleted the jump: the one-transaction removal fails, the one from iptables-save works
        jump = ["-m", "comment", "--comment", f"calyx pod {pod_id}", "-j", pod_chain(pod_id)]
        subprocess.run(
            [iptables.BINARIES[version], "-w", "-t", "nat", "-D", f"CALYX-HP-{bridge}", *jump], check=True
        )
        rules.remove_pod(pod_id)
        rules.remove_pod(pod_id, known=False)  # nothing left: no error
        assert pod_chain(pod_id) not in saved_text()
        rules.add_pod(pod_id, ip, mappings)  # a pod chain the removal of the network takes along
        iptables.restore(version, rules.removal(iptables.save(version)))
        saved = saved_text()
        assert bridge not in saved and pod_chain(pod_id) not in saved
        assert rules.removal(iptables.save(version)) == {"nat": [], "filter": []}
        assert others.missing(iptables.save(version), [subnet]) == {"nat": [], "filter": []}
    finally:
        _drop_chains(lambda chain: chain.endswith((bridge, other)) or chain == pod_chain(pod_id))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bridge", "a-bridge-name-too-long"),
        ("bridge", "br 0"),
        ("subnet", "10.0.0.0/31"),
        ("subnet", "fd00::/64"),
        ("subnet", "nonsense"),
    ],
)
def test_network_config_refuses_unusable_bridge_and_subnet(key: str, value: str) -> None:
    from cri.config import Config, ConfigError

    config = Config()
    setattr(config.network, key, value)
    with pytest.raises(ConfigError, match=f"network.{key}"):
        config.validate()


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("10M", 10_000_000),
        ("1.5M", 1_500_000),
        ("512Ki", 524_288),
        ("1G", 10**9),
        ("250k", 250_000),
        ("8000", 8000),
    ],
)
def test_bandwidth_quantities(text: str, bits: int) -> None:
    from sandbox.cni import bandwidth

    assert bandwidth.parse_rate(text) == bits


def test_bandwidth_capability_from_annotations() -> None:
    from sandbox.cni import bandwidth

    assert bandwidth.from_annotations({}) == {}
    assert bandwidth.from_annotations({"kubernetes.io/ingress-bandwidth": "10M", "other": "x"}) == {
        "ingressRate": 10_000_000,
        "ingressBurst": 2**31 - 1,
    }
    pod = PodRef(
        "id", "n", "ns", "u", "/n", [], bandwidth.from_annotations({"kubernetes.io/egress-bandwidth": "1M"})
    )
    assert pod.capability_args == {"bandwidth": {"egressRate": 1_000_000, "egressBurst": 2**31 - 1}}
