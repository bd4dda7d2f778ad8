"""IPv6 on the built-in pod network: dual-stack from kubelet's pod CIDR or network.subnet_v6, and
IPv6-only pod CIDRs. Checked inside the pods' network namespaces and on the host.

Traffic stays on the host: between pod netns on the test's bridge, and from the host to the bridge's
own (gateway) address. Each test's IPv6 subnet is fd42:24X:<N>::/64 with N from its bridge cxp<N>.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.fault_audit import audit, leftovers
from tests.net_fixtures import (
    Listener,
    Net,
    answer_from,
    cleanup,
    exchange,
    free_port,
    in_netns,
    info,
    ip6tables_save,
    iptables_save,
    link_exists,
    names,
    outside_network,
    pod_config,
    pod_traces,
    run_pod,
    sh,
    status,
    stop_remove,
)

cx = container_fixtures.cx


def _n(net: Net) -> int:
    return int(net.bridge[3:])


def _set_pod_cidr(net: Net, *parts: str) -> None:
    """Give the daemon a pod CIDR as kubelet does (UpdateRuntimeConfig), parts in kubelet's order."""
    cidr = ",".join(parts)
    request = pb.UpdateRuntimeConfigRequest(
        runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=cidr))
    )
    net.daemon.runtime.UpdateRuntimeConfig(request)


def _v4(net: Net) -> str:
    return f"10.248.{_n(net)}.0/24"


def _v6(net: Net) -> str:
    return f"fd42:248:{_n(net)}::/64"


def _ips(net: Net, pod_id: str) -> list[str]:
    network = status(net.daemon, pod_id).status.network
    return [network.ip, *(extra.ip for extra in network.additional_ips)]


def _netns(net: Net, pod_id: str) -> str:
    return str(info(net.daemon, pod_id)["namespaces"]["network"])


def _gateway(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet).network_address + 1)


def _assert_v6_interface(net: Net, pod_id: str, ip: str, subnet: str) -> None:
    """eth0 has the address, usable at once (no DAD, not tentative), and a default route via the bridge."""
    pin = _netns(net, pod_id)
    prefix = ipaddress.ip_network(subnet).prefixlen
    addr = in_netns(pin, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
    assert f"inet6 {ip}/{prefix}" in addr
    assert "tentative" not in addr and "nodad" in addr
    route = in_netns(pin, "ip", "-6", "route", "show", "default").stdout
    assert f"default via {_gateway(subnet)} dev eth0" in route
    assert _accept_ra(pin) == "0"


def _accept_ra(pin: str) -> str:
    return in_netns(pin, "sysctl", "-n", "net.ipv6.conf.eth0.accept_ra").stdout.strip()


def _v6_traces(net: Net) -> list[str]:
    """IPv6 pieces of the test's pods left on the host: leases, hostPort rules (the network's own
    chains and the bridge's gateway address stay until calyx cleanup: ``_v6_network``)."""
    found = [f"lease {ip}" for ip in net.leases if ":" in ip]
    return found + [f"ip6tables {line}" for line in ip6tables_save().splitlines() if "calyx pod" in line]


def _v6_network(net: Net) -> list[str]:
    """The network's shared IPv6 parts on the host: ip6tables lines of its chains, bridge addresses."""
    found = [f"ip6tables {line}" for line in ip6tables_save().splitlines() if names(line, net.bridge)]
    if link_exists(net.bridge):
        addresses = sh("ip", "-6", "-o", "addr", "show", "dev", net.bridge, "scope", "global").stdout
        found += [f"address {line}" for line in addresses.splitlines()]
    return found


def test_dual_stack_pod_cidr_gives_each_pod_both_addresses_and_teardown_removes_them(builtin_net) -> None:
    net = builtin_net()
    _set_pod_cidr(net, _v4(net), _v6(net))
    pod_id = run_pod(net.daemon, pod_config())
    ip4, ip6 = _ips(net, pod_id)
    assert ipaddress.ip_address(ip4) in ipaddress.ip_network(_v4(net))  # kubelet's first family first
    assert ipaddress.ip_address(ip6) in ipaddress.ip_network(_v6(net))
    _assert_v6_interface(net, pod_id, ip6, _v6(net))
    assert (
        f"inet {ip4}/24"
        in in_netns(_netns(net, pod_id), "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    )
    assert net.leases == {
        ip4: {"pod_id": pod_id, "subnet": _v4(net), "bridge": net.bridge},
        ip6: {"pod_id": pod_id, "subnet": _v6(net), "bridge": net.bridge},
    }
    bridge_v6 = sh("ip", "-6", "-o", "addr", "show", "dev", net.bridge).stdout
    assert f"inet6 {_gateway(_v6(net))}/64" in bridge_v6
    assert Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "1"
    rules = ip6tables_save()
    assert f"-A CALYX-PR-{net.bridge} -s {_v6(net)} ! -o {net.bridge} -j MASQUERADE" in rules
    assert f"-A CALYX-FW-{net.bridge} -i {net.bridge} -j ACCEPT" in rules
    assert "127.0.0.0/8" not in rules
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []
    assert _v6_traces(net) == []
    kept = "\n".join(_v6_network(net))  # the network stays for the next pod, until calyx cleanup
    assert f"-A CALYX-PR-{net.bridge} -s {_v6(net)} ! -o {net.bridge} -j MASQUERADE" in kept
    assert f"inet6 {_gateway(_v6(net))}/64" in kept
    assert cleanup(net.daemon).returncode == 0
    assert _v6_network(net) == [] and not link_exists(net.bridge)


def test_ipv6_first_pod_cidr_makes_the_ipv6_address_the_primary_ip(builtin_net) -> None:
    net = builtin_net()
    _set_pod_cidr(net, _v6(net), _v4(net))
    pod_id = run_pod(net.daemon, pod_config())
    primary, additional = _ips(net, pod_id)
    assert ipaddress.ip_address(primary).version == 6
    assert ipaddress.ip_address(additional).version == 4
    hosts = Path(info(net.daemon, pod_id)["files"]["hosts"]).read_text()
    assert primary in hosts and additional in hosts  # /etc/hosts names the pod by both addresses


def test_dual_stack_pods_from_config_ping_each_other_and_the_gateway_over_ipv6(builtin_net) -> None:
    # The config is written before the network number is known: a random subnet of its own instead.
    subnet6 = f"fd42:247:{secrets.token_hex(2)}::/64"
    net = builtin_net(config={"network": {"subnet_v6": subnet6}})
    a = run_pod(net.daemon, pod_config())
    b = run_pod(net.daemon, pod_config())
    (a4, a6), (_, b6) = _ips(net, a), _ips(net, b)
    assert ipaddress.ip_address(a4).version == 4 and a6 != b6
    _assert_v6_interface(net, a, a6, subnet6)
    assert in_netns(_netns(net, a), "ping", "-6", "-c1", "-W5", b6).returncode == 0
    assert in_netns(_netns(net, b), "ping", "-6", "-c1", "-W5", a6).returncode == 0
    assert in_netns(_netns(net, a), "ping", "-6", "-c1", "-W5", _gateway(subnet6)).returncode == 0
    assert in_netns(_netns(net, b), "ping", "-4", "-c1", "-W5", a4).returncode == 0  # IPv4 still works


def test_containers_of_dual_stack_pods_have_the_ipv6_address_and_ping_each_other_over_ipv6(cx: Cx) -> None:
    """Through busybox in the containers (they join the pod's netns): its eth0 and its ping -6."""
    _set_pod_cidr(cx.net, _v4(cx.net), _v6(cx.net))
    pods = [cx.pod(host_network=False) for _ in range(2)]
    ctrs = [cx.run(pod, "c", ["sleep", "1000"]) for pod in pods]
    (_, a6), (_, b6) = (_ips(cx.net, pod[0]) for pod in pods)
    assert f"inet6 {a6}/64" in cx.output(ctrs[0], "ip", "-6", "addr", "show", "eth0")
    assert cx.exec(ctrs[0], "ping", "-6", "-c1", "-W5", b6).exit_code == 0
    assert cx.exec(ctrs[1], "ping", "-6", "-c1", "-W5", a6).exit_code == 0
    assert cx.exec(ctrs[1], "ping", "-6", "-c1", "-W5", _gateway(_v6(cx.net))).exit_code == 0


def test_an_ipv4_only_pod_refuses_ipv6_router_advertisements_too(builtin_net) -> None:
    """IPv6 is on in every pod netns: a rogue router advertisement from another pod would give it
    addresses and routes, so eth0 takes none (accept_ra 0) even when the pod network is IPv4 only."""
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config())
    assert len(_ips(net, pod_id)) == 1
    assert _accept_ra(_netns(net, pod_id)) == "0"


def test_an_ipv6_host_port_of_an_ipv4_only_pod_is_skipped_with_a_warning(builtin_net) -> None:
    net = builtin_net()
    port = free_port()
    mapping = pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=port, host_ip="::")
    pod_id = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    assert f"--dport {port}" not in iptables_save() + ip6tables_save()
    assert "hostPort skipped: the pod has no address of its host_ip's IP family" in net.daemon.log()
    stop_remove(net.daemon, pod_id)


def test_ipv6_only_pod_cidr_gives_only_an_ipv6_address_and_pods_reach_each_other(builtin_net) -> None:
    net = builtin_net()
    _set_pod_cidr(net, _v6(net))
    a = run_pod(net.daemon, pod_config())
    b = run_pod(net.daemon, pod_config())
    assert [ipaddress.ip_address(ip).version for ip in _ips(net, a)] == [6]
    (a6,), (b6,) = _ips(net, a), _ips(net, b)
    _assert_v6_interface(net, b, b6, _v6(net))
    assert "inet " not in in_netns(_netns(net, a), "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert in_netns(_netns(net, a), "ping", "-6", "-c1", "-W5", b6).returncode == 0
    assert set(net.leases) == {a6, b6}
    for pod_id in (a, b):
        stop_remove(net.daemon, pod_id)
    assert _v6_traces(net) == [] and net.leases == {}


def test_host_port_reaches_the_pod_over_ipv6_and_an_ipv4_host_ip_maps_only_ipv4(builtin_net) -> None:
    """hostPort with no host_ip: both families (here reached at the bridge's own IPv6 address from the
    host, and from another pod through it: hairpin, masqueraded); with host_ip 0.0.0.0: IPv4 only."""
    net = builtin_net()
    _set_pod_cidr(net, _v4(net), _v6(net))
    both, v4_only, pod_port = free_port(), free_port(), 8000 + os.getpid() % 1000
    mappings = [
        pb.PortMapping(protocol=pb.TCP, container_port=pod_port, host_port=both),
        pb.PortMapping(protocol=pb.TCP, container_port=pod_port, host_port=v4_only, host_ip="0.0.0.0"),
    ]
    pod_id = run_pod(net.daemon, pod_config(port_mappings=mappings))
    ip6 = _ips(net, pod_id)[1]
    rules = ip6tables_save()
    assert f"--dport {both} -j DNAT --to-destination [{ip6}]:{pod_port}" in rules
    assert f"--dport {v4_only} " not in rules
    gateway6 = _gateway(_v6(net))
    listener = Listener(_netns(net, pod_id), pod_port, family=6)
    try:
        assert exchange(gateway6, both) == f"pong {gateway6}"
    finally:
        listener.close()
    other = _netns(net, run_pod(net.daemon, pod_config()))
    answer = answer_from(other, _netns(net, pod_id), gateway6, both, family=6, listen_port=pod_port)
    assert answer == f"pong {gateway6}"
    stop_remove(net.daemon, pod_id)
    assert f"--dport {both}" not in ip6tables_save()


def test_ipv6_traffic_leaving_the_pod_network_is_masqueraded(builtin_net, short_tmp: Path) -> None:
    """An 'outside' netns made by the test behind a veth on the host: the pod reaches it over IPv6 and
    the outside sees the host's address on that link (ip6tables MASQUERADE), not the pod's."""
    net = builtin_net()
    _set_pod_cidr(net, _v4(net), _v6(net))
    pod_id = run_pod(net.daemon, pod_config())
    pod_ip6 = _ips(net, pod_id)[1]
    port = 4000 + os.getpid() % 1000
    with outside_network(short_tmp / "outside-netns", _n(net)) as outside:
        answer = answer_from(_netns(net, pod_id), outside.pin, outside.far6, port, family=6)
    assert answer == f"pong {outside.host6}"
    assert pod_ip6 not in answer


def test_ipv6_pod_cidr_without_room_for_pods_is_failed_precondition_and_leaves_nothing(builtin_net) -> None:
    """(The other refusal, an IPv6 pod CIDR on a host with IPv6 disabled, cannot be shown here without
    turning IPv6 off host-wide.)"""
    net = builtin_net()
    _set_pod_cidr(net, f"fd42:249:{_n(net)}::/127")
    with pytest.raises(grpc.RpcError) as err:
        run_pod(net.daemon, pod_config())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no room for pods" in str(err.value.details())
    assert net.leases == {} and not link_exists(net.bridge)


def test_a_pod_cidr_made_dual_stack_later_keeps_old_pods_ipv4_only_and_restart_keeps_both_kinds(
    builtin_net, short_tmp: Path
) -> None:
    """kubelet widens the pod CIDR to dual-stack while a pod runs: that pod keeps its one address, new
    pods get two; over IPv4 they reach each other; a daemon restart changes nothing (audit clean)."""
    net = builtin_net()
    _set_pod_cidr(net, _v4(net))
    old = run_pod(net.daemon, pod_config())
    _set_pod_cidr(net, _v4(net), _v6(net))
    new = run_pod(net.daemon, pod_config())
    assert [len(_ips(net, p)) for p in (old, new)] == [1, 2]
    net.daemon.restart()
    cx = Cx(net, None, short_tmp)  # type: ignore[arg-type]  # no images needed
    assert audit(cx) == []
    assert [len(_ips(net, p)) for p in (old, new)] == [1, 2]
    _assert_v6_interface(net, new, _ips(net, new)[1], _v6(net))
    assert in_netns(_netns(net, new), "ping", "-4", "-c1", "-W5", _ips(net, old)[0]).returncode == 0
    for pod_id in (old, new):
        stop_remove(net.daemon, pod_id)
    assert leftovers(cx) == [] and _v6_traces(net) == []


@pytest.mark.parametrize("step", ["bridge.after_veth", "pod.after_network"])
def test_kill9_during_dual_stack_attach_recovers_cleanly(
    builtin_net: Callable[..., Net], short_tmp: Path, step: str
) -> None:
    """Killed with both leases taken and the veth (and, later, the hostPort rules of both families)
    made: the restarted daemon owns or removes all of it; after kubelet's retry and removal nothing
    IPv4 or IPv6 is left."""
    net = builtin_net(env={"CALYX_FAILPOINTS": f"{step}=kill"})
    _set_pod_cidr(net, _v4(net), _v6(net))
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, None, logs)  # type: ignore[arg-type]  # no images needed
    mapping = pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=free_port())
    with pytest.raises(grpc.RpcError) as err:
        run_pod(net.daemon, pod_config(log_directory=str(logs), port_mappings=[mapping]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert net.daemon.proc is not None and net.daemon.proc.wait(30) == -signal.SIGKILL
    assert f"failpoint={step}" in net.daemon.log()
    assert any(":" in ip for ip in net.leases)  # the IPv6 lease was taken before the kill
    net.daemon.env.pop("CALYX_FAILPOINTS", None)
    net.daemon.start()
    assert audit(cx) == []
    pod_id = run_pod(net.daemon, pod_config(log_directory=str(logs), port_mappings=[mapping]))
    assert len(_ips(net, pod_id)) == 2
    assert audit(cx) == []
    stop_remove(net.daemon, pod_id)
    for pod in net.daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        stop_remove(net.daemon, pod.id)
    assert leftovers(cx) == []
    assert _v6_traces(net) == []
