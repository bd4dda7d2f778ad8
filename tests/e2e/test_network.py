"""Pod networking for real: the built-in bridge network and CNI (Debian's bridge, host-local, portmap
plugins), checked from inside the pods' network namespaces and from the host.

Traffic stays on the host: between pod netns on a test bridge, and from the host to its own addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.net_fixtures import (
    CNI_BIN,
    RECORD_PLUGIN,
    Listener,
    Net,
    answer_from,
    cleanup,
    exchange,
    free_port,
    host_address,
    in_netns,
    info,
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


def _netns(net: Net, pod_id: str) -> str:
    return info(net.daemon, pod_id)["namespaces"]["network"]


def _network_ready(net: Net) -> pb.RuntimeCondition:
    conditions = net.daemon.runtime.Status(pb.StatusRequest()).status.conditions
    return next(c for c in conditions if c.type == "NetworkReady")


def _assert_pod_interface(net: Net, pod_id: str) -> str:
    """eth0 is up with the reported address in the test subnet, and the default route is via the gateway."""
    ip = status(net.daemon, pod_id).status.network.ip
    subnet = ipaddress.ip_network(net.subnet)
    assert ipaddress.ip_address(ip) in subnet
    pin = _netns(net, pod_id)
    addr = in_netns(pin, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"inet {ip}/{subnet.prefixlen}" in addr
    assert "UP" in in_netns(pin, "ip", "link", "show", "dev", "eth0").stdout
    route = in_netns(pin, "ip", "-4", "route", "show", "default").stdout
    assert f"default via {subnet.network_address + 1} dev eth0" in route
    return ip


def _ports_on_bridge(bridge: str) -> list[str]:
    return sh("ip", "-o", "link", "show", "master", bridge, check=False).stdout.splitlines()


# --- built-in network ------------------------------------------------------------------------------


def test_builtin_network_is_ready_and_gives_the_pod_eth0_address_route_and_lease(builtin_net) -> None:
    net = builtin_net()
    assert _network_ready(net).status is True
    pod_id = run_pod(net.daemon, pod_config())
    ip = _assert_pod_interface(net, pod_id)
    assert net.leases == {ip: {"pod_id": pod_id, "subnet": net.subnet, "bridge": net.bridge}}
    assert f"cxv{pod_id[:12]}" in "".join(_ports_on_bridge(net.bridge))
    assert Path(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet").read_text().strip() == "1"
    masquerade = f"-A CALYX-PR-{net.bridge} -s {net.subnet} ! -o {net.bridge} -j MASQUERADE"
    assert masquerade in iptables_save()


def test_builtin_pods_reach_each_other_and_the_gateway(builtin_net) -> None:
    net = builtin_net()
    a = run_pod(net.daemon, pod_config())
    b = run_pod(net.daemon, pod_config())
    ip_a, ip_b = (status(net.daemon, p).status.network.ip for p in (a, b))
    assert ip_a != ip_b
    assert in_netns(_netns(net, a), "ping", "-c1", "-W5", ip_b).returncode == 0
    assert in_netns(_netns(net, b), "ping", "-c1", "-W5", ip_a).returncode == 0
    gateway = str(ipaddress.ip_network(net.subnet).network_address + 1)
    assert in_netns(_netns(net, a), "ping", "-c1", "-W5", gateway).returncode == 0


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_builtin_host_port_reaches_the_pod_from_loopback_and_the_host_address(builtin_net, protocol) -> None:
    net = builtin_net()
    host_port, pod_port = free_port(protocol), 8000 + os.getpid() % 1000
    mapping = pb.PortMapping(
        protocol=pb.TCP if protocol == "tcp" else pb.UDP, container_port=pod_port, host_port=host_port
    )
    pod_id = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    listener = Listener(_netns(net, pod_id), pod_port, protocol)
    try:
        gateway = str(ipaddress.ip_network(net.subnet).network_address + 1)
        assert exchange("127.0.0.1", host_port, protocol) == f"pong {gateway}"  # masqueraded from loopback
        me = host_address()
        assert exchange(me, host_port, protocol) == f"pong {me}"
    finally:
        listener.close()
    stop_remove(net.daemon, pod_id)
    assert f"--dport {host_port}" not in iptables_save()


def _new_pod_cidr(net: Net) -> str:
    """Give the daemon a pod CIDR of this test's own (as kubelet does through UpdateRuntimeConfig)."""
    cidr = f"10.248.{int(net.bridge[3:])}.0/24"
    net.daemon.runtime.UpdateRuntimeConfig(
        pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=cidr))
        )
    )
    return cidr


def test_builtin_network_uses_the_pod_cidr_from_update_runtime_config(builtin_net) -> None:
    net = builtin_net()
    cidr = _new_pod_cidr(net)
    pod_id = run_pod(net.daemon, pod_config())
    ip = status(net.daemon, pod_id).status.network.ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)
    route = in_netns(_netns(net, pod_id), "ip", "-4", "route", "show", "default").stdout
    assert f"via {ipaddress.ip_network(cidr)[1]}" in route  # the bridge's address in the new CIDR
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []


def test_builtin_stop_and_remove_leave_nothing_of_the_pods_and_the_network_stays(builtin_net) -> None:
    net = builtin_net()
    mapping = pb.PortMapping(container_port=80, host_port=free_port())
    pods = [run_pod(net.daemon, pod_config(port_mappings=[mapping] if i == 0 else [])) for i in range(2)]
    ips = [status(net.daemon, p).status.network.ip for p in pods]
    stop_remove(net.daemon, pods[0])
    assert pod_traces(net.daemon, pods[0]) == []
    assert list(net.leases) == [ips[1]]
    stop_remove(net.daemon, pods[1])
    assert pod_traces(net.daemon, pods[1]) == []
    assert net.leases == {}
    assert _ports_on_bridge(net.bridge) == []
    addresses = sh("ip", "-o", "addr").stdout
    assert not any(ip in addresses for ip in ips)
    # The network's shared parts stay for the next pod (until calyx cleanup): the bridge with its
    # gateway address, the chains and the jumps into them.
    assert link_exists(net.bridge)
    gateway = f"{ipaddress.ip_network(net.subnet).network_address + 1}/24"
    assert gateway in sh("ip", "-o", "addr", "show", "dev", net.bridge).stdout
    saved = iptables_save()
    assert f"-A POSTROUTING -j CALYX-PR-{net.bridge}" in saved
    assert f"-A FORWARD -j CALYX-FW-{net.bridge}" in saved
    assert f"-A PREROUTING -m addrtype --dst-type LOCAL -j CALYX-HP-{net.bridge}" in saved
    assert f"-A CALYX-PR-{net.bridge} -s {net.subnet} ! -o {net.bridge} -j MASQUERADE" in saved


def test_builtin_address_is_reused_after_release_and_never_shared(builtin_net) -> None:
    net = builtin_net()
    a = run_pod(net.daemon, pod_config())
    b = run_pod(net.daemon, pod_config())
    ip_a = status(net.daemon, a).status.network.ip
    stop_remove(net.daemon, a)
    c = run_pod(net.daemon, pod_config())
    assert status(net.daemon, c).status.network.ip == ip_a
    assert status(net.daemon, b).status.network.ip != ip_a


# --- CNI ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0", "0.4.0"])
def test_cni_pod_gets_eth0_address_route_and_reports_its_ip(cni_net, version: str) -> None:
    net = cni_net(version=version)
    assert _network_ready(net).status is True
    pod_id = run_pod(net.daemon, pod_config())
    ip = _assert_pod_interface(net, pod_id)
    assert (net.ipam_dir / ip).read_text().split()[0] == pod_id  # host-local's lease names the pod
    details = info(net.daemon, pod_id)["network"]
    assert details["kind"] == "cni" and details["result"]["ips"][0]["address"].startswith(ip)


def test_cni_pods_reach_each_other(cni_net) -> None:
    net = cni_net()
    a = run_pod(net.daemon, pod_config())
    b = run_pod(net.daemon, pod_config())
    ip_b = status(net.daemon, b).status.network.ip
    ip_a = status(net.daemon, a).status.network.ip
    assert in_netns(_netns(net, a), "ping", "-c1", "-W5", ip_b).returncode == 0
    assert in_netns(_netns(net, b), "ping", "-c1", "-W5", ip_a).returncode == 0


def test_cni_host_port_through_portmap_reaches_the_pod(cni_net) -> None:
    net = cni_net()
    host_port, pod_port = free_port(), 9000 + os.getpid() % 1000
    mapping = pb.PortMapping(container_port=pod_port, host_port=host_port)
    pod_id = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    listener = Listener(_netns(net, pod_id), pod_port)
    try:
        me = host_address()
        assert exchange(me, host_port) == f"pong {me}"
        assert exchange("127.0.0.1", host_port).startswith("pong ")
    finally:
        listener.close()
    stop_remove(net.daemon, pod_id)
    assert f"--dport {host_port}" not in iptables_save()


def test_cni_plugins_get_cni_args_and_port_mapping_capability(cni_net, short_tmp: Path) -> None:
    bin_dir = short_tmp / "cnibin"
    bin_dir.mkdir()
    plugin = bin_dir / "cx-record"
    plugin.write_text(RECORD_PLUGIN)
    plugin.chmod(0o755)
    net = cni_net(bin_dirs=[str(bin_dir), CNI_BIN], plugins=[])
    conflist_file = net.cni_dir / "10-test.conflist"
    conflist = json.loads(conflist_file.read_text())
    conflist["plugins"] = [
        {"type": "cx-record", "capabilities": {"portMappings": True, "bandwidth": True}, "custom": "x"}
    ]
    conflist_file.write_text(json.dumps(conflist))
    mapping = pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")
    config = pod_config(port_mappings=[mapping])
    pod_id = run_pod(net.daemon, config)
    record = json.loads((bin_dir / "record-ADD.json").read_text())
    env = record["env"]
    assert env["CNI_CONTAINERID"] == pod_id
    assert env["CNI_NETNS"] == _netns(net, pod_id)
    assert env["CNI_IFNAME"] == "eth0"
    args = dict(kv.split("=", 1) for kv in env["CNI_ARGS"].split(";"))
    assert args["K8S_POD_NAMESPACE"] == "calyx-test"
    assert args["K8S_POD_NAME"] == config.metadata.name
    assert args["K8S_POD_INFRA_CONTAINER_ID"] == pod_id
    assert args["IgnoreUnknown"] == "1"
    conf = record["conf"]
    assert conf["name"] == conflist["name"] and conf["cniVersion"] == "1.0.0" and conf["custom"] == "x"
    assert conf["runtimeConfig"] == {
        "portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]
    }
    stop_remove(net.daemon, pod_id)
    deleted = json.loads((bin_dir / "record-DEL.json").read_text())
    assert deleted["env"]["CNI_CONTAINERID"] == pod_id
    assert "prevResult" in deleted["conf"]


def test_cni_config_with_a_missing_plugin_is_network_not_ready(cni_net) -> None:
    net = cni_net(plugins=[{"type": "cx-no-such-plugin"}])
    condition = _network_ready(net)
    assert condition.status is False
    assert condition.reason == "NetworkPluginNotReady"
    assert "cx-no-such-plugin" in condition.message
    with pytest.raises(grpc.RpcError) as err:
        run_pod(net.daemon, pod_config())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cx-no-such-plugin" in err.value.details()
    assert net.records("pod") == {}
    assert not any((net.daemon.run_root / "ns").glob("*/*"))


def test_cni_plugin_error_is_quoted_in_the_rpc_and_the_pod_is_undone(cni_net, short_tmp: Path) -> None:
    net = cni_net()
    conflist_file = net.cni_dir / "10-test.conflist"
    conflist = json.loads(conflist_file.read_text())
    conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.249.0.0/40"}]]
    conflist_file.write_text(json.dumps(conflist))
    with pytest.raises(grpc.RpcError) as err:
        run_pod(net.daemon, pod_config())
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "CNI plugin bridge ADD" in err.value.details()
    assert "10.249.0.0/40" in err.value.details()  # the plugin's own message
    (pod_id,) = re.findall(r"pod_id=([0-9a-f]{64})", net.daemon.log())[:1]
    assert net.records("pod") == {}
    assert pod_traces(net.daemon, pod_id) == []


def test_cni_del_after_restart_uses_the_cached_config_and_result(cni_net) -> None:
    net = cni_net()
    pod_id = run_pod(
        net.daemon, pod_config(port_mappings=[pb.PortMapping(container_port=80, host_port=free_port())])
    )
    ip = status(net.daemon, pod_id).status.network.ip
    assert (net.ipam_dir / ip).exists()
    net.daemon.restart()
    (net.cni_dir / "10-test.conflist").unlink()  # the config is gone; DEL must still work
    assert status(net.daemon, pod_id).status.network.ip == ip
    stop_remove(net.daemon, pod_id)
    assert not (net.ipam_dir / ip).exists()
    assert _ports_on_bridge(net.bridge) == []
    assert pod_traces(net.daemon, pod_id) == []
    assert pod_id not in iptables_save()


def test_cni_kill9_after_add_is_deleted_at_restart(cni_net) -> None:
    net = cni_net(env={"CALYX_FAILPOINTS": "pod.after_network=kill"})
    with pytest.raises(grpc.RpcError):
        run_pod(net.daemon, pod_config())
    (pod_id,) = net.records("pod")
    leases = [p for p in net.ipam_dir.iterdir() if p.name[0].isdigit()]
    assert len(leases) == 1  # ADD happened before the kill
    net.daemon.env.pop("CALYX_FAILPOINTS")
    net.daemon.start()
    assert net.records("pod") == {}
    assert [p for p in net.ipam_dir.iterdir() if p.name[0].isdigit()] == []
    assert _ports_on_bridge(net.bridge) == []
    assert pod_traces(net.daemon, pod_id) == []


def test_cni_config_that_is_not_json_is_network_not_ready(cni_net) -> None:
    net = cni_net()
    (net.cni_dir / "00-broken.conflist").write_text("{not json")
    condition = _network_ready(net)
    assert condition.status is False
    assert "00-broken.conflist" in condition.message
    with pytest.raises(grpc.RpcError) as err:
        run_pod(net.daemon, pod_config())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_builtin_sctp_host_port_gets_its_dnat_rule(builtin_net) -> None:
    """SCTP traffic cannot be tried here (the kernel has no SCTP sockets); the forwarding rule can."""
    net = builtin_net()
    port = free_port()
    mapping = pb.PortMapping(protocol=pb.SCTP, container_port=3868, host_port=port)
    pod_id = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    ip = status(net.daemon, pod_id).status.network.ip
    assert f"-p sctp -m sctp --dport {port} -j DNAT --to-destination {ip}:3868" in iptables_save()
    stop_remove(net.daemon, pod_id)
    assert f"--dport {port}" not in iptables_save()


@pytest.mark.parametrize("kind", ["builtin", "cni"])
def test_concurrent_runs_get_distinct_addresses_and_concurrent_removal_leaves_nothing(
    builtin_net, cni_net, kind: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    net = builtin_net() if kind == "builtin" else cni_net()
    with ThreadPoolExecutor(6) as pool:
        pods = list(pool.map(lambda _: run_pod(net.daemon, pod_config()), range(6)))
    ips = {status(net.daemon, p).status.network.ip for p in pods}
    assert len(ips) == 6
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(net.subnet) for ip in ips)
    first, *others = pods
    for other in others[:2]:
        peer = status(net.daemon, other).status.network.ip
        assert in_netns(_netns(net, first), "ping", "-c1", "-W5", peer).returncode == 0
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda p: stop_remove(net.daemon, p), pods))
    assert all(pod_traces(net.daemon, p) == [] for p in pods)
    assert _ports_on_bridge(net.bridge) == []
    assert net.leases == {}


def test_pod_whose_namespaces_vanished_is_not_ready_after_restart(builtin_net) -> None:
    """As after a reboot, which empties /run: the pod turns NOTREADY and its network is released."""
    net = builtin_net()
    pod_id = run_pod(
        net.daemon, pod_config(port_mappings=[pb.PortMapping(container_port=80, host_port=free_port())])
    )
    net.daemon.stop()
    for kind in ("net", "ipc", "uts"):
        pin = net.daemon.run_root / "ns" / kind / pod_id
        sh("umount", str(pin))
        pin.unlink()
    net.daemon.start()
    st = status(net.daemon, pod_id).status
    assert st.state == pb.SANDBOX_NOTREADY
    assert st.network.ip == ""
    assert net.leases == {}
    assert pod_id[:16] not in iptables_save()
    assert f"-A POSTROUTING -j CALYX-PR-{net.bridge}" in iptables_save()  # the network stays
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []


def test_builtin_host_port_bound_to_a_host_ip_answers_only_there(builtin_net) -> None:
    net = builtin_net()
    host_port, pod_port = free_port(), 7000 + os.getpid() % 1000
    mapping = pb.PortMapping(container_port=pod_port, host_port=host_port, host_ip="127.0.0.1")
    pod_id = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    listener = Listener(_netns(net, pod_id), pod_port)
    try:
        assert exchange("127.0.0.1", host_port).startswith("pong ")
        with pytest.raises(ConnectionRefusedError):  # not forwarded: nothing listens on the host itself
            exchange(host_address(), host_port)
    finally:
        listener.close()


def test_builtin_host_port_reached_from_pods_through_the_host_address(builtin_net) -> None:
    """Hairpin: another pod and the serving pod itself reach the hostPort via the host's address."""
    net = builtin_net()
    host_port, pod_port = free_port(), 6000 + os.getpid() % 1000
    server = run_pod(
        net.daemon, pod_config(port_mappings=[pb.PortMapping(container_port=pod_port, host_port=host_port)])
    )
    other = run_pod(net.daemon, pod_config())
    listener = Listener(_netns(net, server), pod_port)
    gateway = str(ipaddress.ip_network(net.subnet).network_address + 1)
    probe = (
        f"import socket; s = socket.create_connection(('{host_address()}', {host_port}), 10); "
        "print(s.recv(100).decode())"
    )
    try:
        for pod_id in (other, server):
            answer = in_netns(_netns(net, pod_id), sys.executable, "-c", probe).stdout.strip()
            assert answer == f"pong {gateway}"  # masqueraded, so the answer comes back through the host
    finally:
        listener.close()


def test_cni_bandwidth_annotations_shape_the_pods_traffic(cni_net) -> None:
    """kubelet's bandwidth annotations reach Debian's bandwidth plugin, which installs tc shapers."""
    net = cni_net()
    conflist_file = net.cni_dir / "10-test.conflist"
    conflist = json.loads(conflist_file.read_text())
    conflist["plugins"].append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    conflist_file.write_text(json.dumps(conflist))
    annotations = {"kubernetes.io/ingress-bandwidth": "11M", "kubernetes.io/egress-bandwidth": "23M"}
    pod_id = run_pod(net.daemon, pod_config(annotations=annotations))
    qdiscs = sh("tc", "qdisc", "show").stdout
    assert "rate 11Mbit" in qdiscs and "rate 23Mbit" in qdiscs
    stop_remove(net.daemon, pod_id)
    qdiscs = sh("tc", "qdisc", "show").stdout
    assert "rate 11Mbit" not in qdiscs and "rate 23Mbit" not in qdiscs
    assert pod_traces(net.daemon, pod_id) == []


def test_builtin_bandwidth_annotations_shape_both_ends_of_the_veth(builtin_net) -> None:
    net = builtin_net()
    annotations = {"kubernetes.io/ingress-bandwidth": "11M", "kubernetes.io/egress-bandwidth": "23M"}
    pod_id = run_pod(net.daemon, pod_config(annotations=annotations))
    host_end = sh("tc", "qdisc", "show", "dev", f"cxv{pod_id[:12]}").stdout
    assert "tbf" in host_end and "rate 11Mbit" in host_end  # what the pod receives
    pod_end = in_netns(_netns(net, pod_id), "tc", "qdisc", "show", "dev", "eth0").stdout
    assert "tbf" in pod_end and "rate 23Mbit" in pod_end  # what the pod sends
    other = run_pod(net.daemon, pod_config())
    assert "tbf" not in sh("tc", "qdisc", "show", "dev", f"cxv{other[:12]}").stdout
    stop_remove(net.daemon, pod_id)
    assert "rate 11Mbit" not in sh("tc", "qdisc", "show").stdout
    assert pod_traces(net.daemon, pod_id) == []


def test_builtin_pods_on_old_and_new_pod_cidr_reach_each_other_unmasqueraded(builtin_net) -> None:
    """After UpdateRuntimeConfig changes the pod CIDR the bridge carries both subnets; pods of the two
    reach each other with their own source addresses (only traffic leaving the bridge is masqueraded)."""
    net = builtin_net()
    old = run_pod(net.daemon, pod_config())
    cidr = _new_pod_cidr(net)
    new = run_pod(net.daemon, pod_config())
    old_ip, new_ip = (status(net.daemon, p).status.network.ip for p in (old, new))
    assert ipaddress.ip_address(old_ip) in ipaddress.ip_network(net.subnet)
    assert ipaddress.ip_address(new_ip) in ipaddress.ip_network(cidr)
    port = 5000 + os.getpid() % 1000
    listener = Listener(_netns(net, new), port)
    probe = (
        f"import socket; s = socket.create_connection(('{new_ip}', {port}), 10); print(s.recv(100).decode())"
    )
    try:
        assert in_netns(_netns(net, old), sys.executable, "-c", probe).stdout.strip() == f"pong {old_ip}"
    finally:
        listener.close()
    assert in_netns(_netns(net, new), "ping", "-c1", "-W5", old_ip).returncode == 0
    stop_remove(net.daemon, old)
    stop_remove(net.daemon, new)
    assert net.leases == {}
    saved = iptables_save()  # the network, kept, masquerades both subnets
    assert all(
        f"-A CALYX-PR-{net.bridge} -s {s} ! -o {net.bridge} -j MASQUERADE" in saved
        for s in (net.subnet, cidr)
    )


def test_builtin_traffic_leaving_the_pod_network_is_masqueraded(builtin_net, short_tmp: Path) -> None:
    """An 'outside' network made by the test (a netns behind a veth on the host): the pod reaches it,
    and the outside sees the host's address, not the pod's."""
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config())
    pod_ip = status(net.daemon, pod_id).status.network.ip
    port = 4000 + os.getpid() % 1000
    with outside_network(short_tmp / "outside-netns", int(net.bridge[3:])) as outside:
        answer = answer_from(_netns(net, pod_id), outside.pin, outside.far4, port)
    assert answer == f"pong {outside.host4}"  # the host's address on that link
    assert pod_ip not in answer


def test_cni_dual_stack_pod_reports_ipv4_and_ipv6(cni_net) -> None:
    net = cni_net()
    n = int(net.bridge[3:])
    v6 = f"fd42:ca1f:{n:x}::/64"
    conflist_file = net.cni_dir / "10-test.conflist"
    conflist = json.loads(conflist_file.read_text())
    ipam = conflist["plugins"][0]["ipam"]
    ipam["ranges"].append([{"subnet": v6}])
    ipam["routes"].append({"dst": "::/0"})
    conflist_file.write_text(json.dumps(conflist))
    a = run_pod(net.daemon, pod_config(hostname="dual"))
    b = run_pod(net.daemon, pod_config())
    st = status(net.daemon, a).status
    assert ipaddress.ip_address(st.network.ip) in ipaddress.ip_network(net.subnet)  # IPv4 first
    (extra,) = st.network.additional_ips
    assert ipaddress.ip_address(extra.ip) in ipaddress.ip_network(v6)
    assert extra.ip in in_netns(_netns(net, a), "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    hosts = Path(info(net.daemon, a)["files"]["hosts"]).read_text()
    assert f"{st.network.ip}\tdual" in hosts and f"{extra.ip}\tdual" in hosts
    b_v6 = status(net.daemon, b).status.network.additional_ips[0].ip
    # DAD may keep a fresh address tentative for a moment: ping retries within its deadline
    assert in_netns(_netns(net, a), "ping", "-6", "-c1", "-w10", b_v6).returncode == 0
    stop_remove(net.daemon, a)
    stop_remove(net.daemon, b)
    assert [p.name for p in net.ipam_dir.iterdir() if p.name[0].isdigit() or ":" in p.name] == []


def test_builtin_network_shared_by_mistake_is_not_pulled_from_under_the_other_daemon(
    builtin_net, daemon_factory
) -> None:
    """Two daemons configured with the same bridge (different subnets): the first one's last pod leaving
    keeps the network, and its calyx cleanup is refused while the other's pod is plugged into the
    bridge; once that pod is gone too, cleanup removes the bridge and the chains."""
    net = builtin_net()
    n = int(net.bridge[3:])
    other = daemon_factory(
        {"network": {"bridge": net.bridge, "subnet": f"10.247.{n}.0/24", "cni_conf_dir": "/nonexistent"}},
        name="other",
    )
    mine = run_pod(net.daemon, pod_config())
    host_port, pod_port = free_port(), 3000 + os.getpid() % 1000
    theirs = run_pod(
        other, pod_config(port_mappings=[pb.PortMapping(container_port=pod_port, host_port=host_port)])
    )
    stop_remove(net.daemon, mine)
    assert link_exists(net.bridge)
    refused = cleanup(net.daemon)
    assert refused.returncode == 1 and f"interfaces cxv{theirs[:12]}" in refused.stderr
    their_netns = json.loads(
        other.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=theirs, verbose=True)).info[
            "info"
        ]
    )["namespaces"]["network"]
    listener = Listener(their_netns, pod_port)
    try:
        assert exchange("127.0.0.1", host_port).startswith("pong ")
    finally:
        listener.close()
    stop_remove(other, theirs)
    assert link_exists(net.bridge)
    done = cleanup(net.daemon)
    assert done.returncode == 0, done.stderr
    assert not link_exists(net.bridge)
    assert not [line for line in iptables_save().splitlines() if names(line, net.bridge)]
