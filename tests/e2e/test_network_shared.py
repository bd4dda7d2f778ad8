"""The built-in network's shared parts (bridge, gateway addresses, chains, sysctls) are made once and kept:
they outlive the last pod and restarts, are repaired at start and at the next pod when someone removed
them, and go only with ``calyx cleanup``, which takes this network's parts and nothing of another's.
And a pod's own network work is counted: iptables invocations logged by wrappers first on the daemon's
PATH (counts are deterministic where times are not).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cri.api import api_pb2 as pb
from tests.net_fixtures import (
    Listener,
    Net,
    cleanup,
    exchange,
    free_port,
    in_netns,
    info,
    ip6tables_save,
    iptables_save,
    link_exists,
    names,
    pod_config,
    pod_traces,
    run_pod,
    sh,
    status,
    stop_remove,
)

BINARIES = (
    "iptables",
    "ip6tables",
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
)


class Calls:
    """A directory of wrappers for the iptables programs that log their name and exec the real one."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "wrapped-bin"
        self.dir.mkdir()
        self.log = base / "iptables-calls.log"
        self.log.touch()
        for name in BINARIES:
            real = shutil.which(name)
            assert real is not None, name
            wrapper = self.dir / name
            wrapper.write_text(f'#!/bin/sh\necho {name} >> {self.log}\nexec {real} "$@"\n')
            wrapper.chmod(0o755)
        self._seen = 0

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.dir}:{os.environ['PATH']}"}

    def since_last(self) -> list[str]:
        """The programs run since the last call, in order."""
        lines = self.log.read_text().splitlines()
        new, self._seen = lines[self._seen :], len(lines)
        return new


def _netns(net: Net, pod_id: str) -> str:
    return str(info(net.daemon, pod_id)["namespaces"]["network"])


def _network_lines(bridge: str) -> list[str]:
    """The lines of the network's chains and the jumps into them, iptables and ip6tables (not the jumps
    into its pods' hostPort chains)."""
    lines = (iptables_save() + ip6tables_save()).splitlines()
    return sorted(line for line in lines if names(line, bridge) and "calyx pod" not in line)


def _gateway(net: Net) -> str:
    return f"{ipaddress.ip_network(net.subnet).network_address + 1}/24"


def _shared_parts(net: Net) -> dict[str, object]:
    """What of the network's shared parts is on the host."""
    up = link_exists(net.bridge) and "UP" in sh("ip", "link", "show", "dev", net.bridge).stdout.split(">")[0]
    addresses = sh("ip", "-o", "addr", "show", "dev", net.bridge, check=False).stdout
    localnet = Path(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet")
    sysfs = Path(f"/sys/class/net/{net.bridge}")
    return {
        "bridge up": up,
        # The gateway's MAC address is the bridge's: set by Calyx (addr_assign_type 3, NET_ADDR_SET), so
        # neither a pod coming or going nor the bridge made again changes it under the pods' ARP caches.
        "mac": (sysfs / "address").read_text().strip() if sysfs.exists() else None,
        "mac set": sysfs.exists() and (sysfs / "addr_assign_type").read_text().strip() == "3",
        "gateway": _gateway(net) in addresses,
        "route_localnet": localnet.exists() and localnet.read_text().strip() == "1",
        "rules": _network_lines(net.bridge),
    }


def _host_port_pod(net: Net) -> tuple[str, int, int]:
    host_port, pod_port = free_port(), 7000 + os.getpid() % 1000
    pod_id = run_pod(
        net.daemon, pod_config(port_mappings=[pb.PortMapping(container_port=pod_port, host_port=host_port)])
    )
    return pod_id, host_port, pod_port


def _answers(net: Net, pod_id: str, host_port: int, pod_port: int) -> bool:
    """The pod's hostPort answers from 127.0.0.1 (the host's jump, the pod's DNAT, the bridge with the
    pod plugged in and its gateway address, route_localnet and the loopback masquerade all take part)."""
    listener = Listener(_netns(net, pod_id), pod_port)
    try:
        return exchange("127.0.0.1", host_port).startswith("pong ")
    except OSError:
        return False
    finally:
        listener.close()


def test_the_network_outlives_its_last_pod_and_restarts_and_its_pods_keep_working(builtin_net) -> None:
    net = builtin_net()
    pod_id, host_port, pod_port = _host_port_pod(net)
    whole = _shared_parts(net)
    assert all(whole.values()), whole
    net.daemon.restart()
    assert _answers(net, pod_id, host_port, pod_port)  # a pod from before the restart keeps working
    stop_remove(net.daemon, pod_id)
    assert pod_traces(net.daemon, pod_id) == []
    net.daemon.restart()
    assert _shared_parts(net) == whole  # the last pod and two restarts later, all of it is still there
    other = run_pod(net.daemon, pod_config())
    gateway = _gateway(net).split("/")[0]
    assert in_netns(_netns(net, other), "ping", "-c1", "-W5", gateway).returncode == 0


def _damage(net: Net, part: str) -> None:
    """Remove one shared part as an operator or a firewall reload might."""
    br = net.bridge
    if part == "bridge":
        sh("ip", "link", "del", br)
    elif part == "gateway":
        sh("ip", "addr", "del", _gateway(net), "dev", br)
    elif part == "sysctl":
        Path(f"/proc/sys/net/ipv4/conf/{br}/route_localnet").write_text("0")
    elif part == "chains":  # a flush of everything of the network, pods' hostPort chains included
        for table, chain, jump in (
            ("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", f"CALYX-HP-{br}"]),
            ("nat", "OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", f"CALYX-HP-{br}"]),
            ("nat", "POSTROUTING", ["-j", f"CALYX-PR-{br}"]),
            ("filter", "FORWARD", ["-j", f"CALYX-FW-{br}"]),
        ):
            sh("iptables", "-w", "10", "-t", table, "-D", chain, *jump)
        pod_chains = [
            line.split()[-1] for line in iptables_save().splitlines() if f"-A CALYX-HP-{br} " in line
        ]
        for table, chain in (
            ("nat", f"CALYX-HP-{br}"),
            ("nat", f"CALYX-PR-{br}"),
            ("filter", f"CALYX-FW-{br}"),
        ):
            sh("iptables", "-w", "10", "-t", table, "-F", chain)
            sh("iptables", "-w", "10", "-t", table, "-X", chain)
        for chain in pod_chains:
            sh("iptables", "-w", "10", "-t", "nat", "-F", chain)
            sh("iptables", "-w", "10", "-t", "nat", "-X", chain)
    else:
        raise ValueError(part)


PARTS = ["bridge", "gateway", "sysctl", "chains"]


@pytest.mark.parametrize("part", PARTS)
def test_a_removed_shared_part_is_made_again_at_start(builtin_net, part: str) -> None:
    net = builtin_net()
    pod_id, host_port, pod_port = _host_port_pod(net)
    whole = _shared_parts(net)
    pod_rules = [line for line in iptables_save().splitlines() if pod_id[:16] in line]
    net.daemon.stop()
    _damage(net, part)
    assert _shared_parts(net) != whole
    net.daemon.start()
    assert _shared_parts(net) == whole
    assert sorted(line for line in iptables_save().splitlines() if pod_id[:16] in line) == sorted(pod_rules)
    assert "built-in network parts were missing; made again" in net.daemon.log()
    assert _answers(net, pod_id, host_port, pod_port)  # the pod is plugged in and reachable again


@pytest.mark.parametrize("part", PARTS)
def test_a_removed_shared_part_is_made_again_by_the_next_pod(builtin_net, part: str) -> None:
    """The next pod's setup looks at the bridge, its addresses and the sysctls (no program run); the
    chains are found missing by the next pod with a hostPort, whose rules cannot go in without them."""
    net = builtin_net()
    old, host_port, pod_port = _host_port_pod(net)
    whole = _shared_parts(net)
    _damage(net, part)
    new, new_host_port, new_pod_port = _host_port_pod(net)
    assert _shared_parts(net) == whole
    assert _answers(net, old, host_port, pod_port)
    assert _answers(net, new, new_host_port, new_pod_port)
    new_ip = status(net.daemon, new).status.network.ip
    assert in_netns(_netns(net, old), "ping", "-c1", "-W5", new_ip).returncode == 0


def test_a_pod_without_host_ports_costs_no_iptables_call_and_one_with_costs_one_restore(
    builtin_net, short_tmp: Path
) -> None:
    calls = Calls(short_tmp)
    net = builtin_net(env=calls.env)
    assert calls.since_last() == []  # a daemon that never ran a pod has made nothing
    first = run_pod(net.daemon, pod_config())
    assert calls.since_last() == ["iptables-save", "iptables-restore"]  # the network, made once
    second = run_pod(net.daemon, pod_config())
    stop_remove(net.daemon, second)
    stop_remove(net.daemon, first)  # the last pod
    assert calls.since_last() == []
    mapping = pb.PortMapping(container_port=80, host_port=free_port())
    with_ports = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    assert calls.since_last() == ["iptables-restore"]
    stop_remove(net.daemon, with_ports)
    assert calls.since_last() == ["iptables-restore"]
    net.daemon.restart()
    assert calls.since_last() == ["iptables-save"]  # checked at start, found whole
    again = run_pod(net.daemon, pod_config())
    stop_remove(net.daemon, again)
    assert calls.since_last() == []


def test_a_dual_stack_pod_costs_one_restore_per_family(
    builtin_net: Callable[..., Net], short_tmp: Path
) -> None:
    calls = Calls(short_tmp)
    net = builtin_net(env=calls.env)
    v6 = f"fd42:246:{int(net.bridge[3:]):x}::/64"
    cidr = pb.NetworkConfig(pod_cidr=f"{net.subnet},{v6}")
    net.daemon.runtime.UpdateRuntimeConfig(
        pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(network_config=cidr))
    )
    first = run_pod(net.daemon, pod_config())
    assert sorted(calls.since_last()) == [
        "ip6tables-restore",
        "ip6tables-save",
        "iptables-restore",
        "iptables-save",
    ]
    mapping = pb.PortMapping(container_port=80, host_port=free_port())
    with_ports = run_pod(net.daemon, pod_config(port_mappings=[mapping]))
    assert calls.since_last() == ["iptables-restore", "ip6tables-restore"]
    stop_remove(net.daemon, with_ports)
    assert calls.since_last() == ["iptables-restore", "ip6tables-restore"]
    stop_remove(net.daemon, first)
    assert calls.since_last() == []


def test_cleanup_is_refused_while_pods_use_the_network_and_then_removes_exactly_its_parts(
    builtin_net,
) -> None:
    mine, theirs = builtin_net(), builtin_net()
    pod_id, _, _ = _host_port_pod(mine)
    their_pod, their_host_port, their_pod_port = _host_port_pod(theirs)
    their_rules = _network_lines(theirs.bridge)
    their_pod_rules = [line for line in iptables_save().splitlines() if their_pod[:16] in line]
    refused = cleanup(mine.daemon)
    assert refused.returncode == 1
    assert pod_id in refused.stderr and "--force" in refused.stderr
    assert link_exists(mine.bridge) and _network_lines(mine.bridge)
    stop_remove(mine.daemon, pod_id)
    done = cleanup(mine.daemon)
    assert done.returncode == 0, done.stderr
    assert f"removed bridge {mine.bridge}" in done.stdout
    assert not link_exists(mine.bridge)
    assert _network_lines(mine.bridge) == []
    assert not any(pod_id[:16] in line for line in iptables_save().splitlines())
    # The other network on the same host is untouched and works.
    assert link_exists(theirs.bridge)
    assert _network_lines(theirs.bridge) == their_rules
    assert [line for line in iptables_save().splitlines() if their_pod[:16] in line] == their_pod_rules
    assert _answers(theirs, their_pod, their_host_port, their_pod_port)
    again = cleanup(mine.daemon)  # nothing left: still a success
    assert again.returncode == 0 and "nothing of the built-in network" in again.stdout


def test_forced_cleanup_cuts_the_pods_off_and_the_next_pod_plugs_them_in_again(builtin_net) -> None:
    net = builtin_net()
    old, host_port, pod_port = _host_port_pod(net)
    forced = cleanup(net.daemon, "--force")
    assert forced.returncode == 0, forced.stderr
    assert not link_exists(net.bridge) and _network_lines(net.bridge) == []
    assert not any(old[:16] in line for line in iptables_save().splitlines())  # its hostPort chain too
    new = run_pod(net.daemon, pod_config())
    parts = _shared_parts(net)
    assert parts["bridge up"] and parts["rules"], parts
    ports = sh("ip", "-o", "link", "show", "master", net.bridge).stdout
    assert f"cxv{old[:12]}" in ports, ports
    new_ip = status(net.daemon, new).status.network.ip
    ping = in_netns(_netns(net, old), "ping", "-c1", "-W5", new_ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert _answers(net, old, host_port, pod_port), net.daemon.log()[-3000:]  # its hostPort rules too


def test_the_gateway_mac_stays_while_pods_come_and_go(builtin_net) -> None:
    """A bridge takes its ports' lowest MAC address unless it was given one: the pods' ARP entries for
    their gateway would go stale whenever the pod with the lowest veth address left."""
    net = builtin_net()
    first = run_pod(net.daemon, pod_config())
    before = _shared_parts(net)
    assert before["mac set"], before
    others = [run_pod(net.daemon, pod_config()) for _ in range(3)]
    stop_remove(net.daemon, first)
    assert _shared_parts(net)["mac"] == before["mac"]
    for pod_id in others:
        stop_remove(net.daemon, pod_id)


def test_a_removed_pod_leaves_no_neighbour_entry_for_the_next_pod_given_its_address(builtin_net) -> None:
    """Addresses are reused at once (the lowest free one): a neighbour entry left on the bridge would
    send the host's traffic for the new pod to the old pod's MAC address until it went stale."""
    net = builtin_net()
    pod_id = run_pod(net.daemon, pod_config())
    ip = status(net.daemon, pod_id).status.network.ip
    assert sh("ping", "-c1", "-W5", ip).returncode == 0  # the host learns the pod's MAC address
    assert ip in sh("ip", "neigh", "show", "dev", net.bridge).stdout
    stop_remove(net.daemon, pod_id)
    assert ip not in sh("ip", "neigh", "show", "dev", net.bridge).stdout
