"""iptables rules of the built-in network, all in chains of its own so teardown never touches others'.

Per bridge (names carry the bridge name so several networks on one host stay apart):
  nat  CALYX-HP-<br>   hostPort dispatch, jumped to from PREROUTING and OUTPUT for local destinations
                       (OUTPUT makes hostPorts work from the host itself, 127.0.0.1 included)
  nat  CALYX-PR-<br>   masquerade: pod traffic leaving the subnet, loopback-sourced traffic DNATed
                       into the bridge (needs route_localnet on the bridge), and pods reaching
                       hostPorts through a host address (hairpin)
  filter CALYX-FW-<br> accept forwarding to and from the bridge
Per pod: nat CALYX-H-<id16> with the pod's DNAT rules, jumped to from CALYX-HP-<br>.
The network chains go when the last pod of the bridge is gone; a pod's chain goes at its stop.

IPv6 (dual-stack or IPv6-only pod networks) uses the same chain names in ip6tables (``BridgeRules(br, 6)``),
with two differences: there is no loopback rule, since the kernel never routes ::1 off the host (no
route_localnet for IPv6), so a hostPort is not reachable at [::1], only at the host's IPv6 addresses;
and a hostPort mapping goes to the family of its host_ip (none or "" maps both families of the pod,
"0.0.0.0" or an IPv4 address only IPv4, "::" or an IPv6 address only IPv6).
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from typing import Any

from cri import proc
from cri.errors import CommandFailed
from sandbox.bridge.ipam import Network

log = logging.getLogger("sandbox.bridge.iptables")

TIMEOUT_S = 30.0
PROTOCOLS = ("tcp", "udp", "sctp")


BINARIES = {4: "iptables", 6: "ip6tables"}


def _ipt(v: int, table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return proc.run([BINARIES[v], "-w", "10", "-t", table, *args], TIMEOUT_S, check=check)


def _exists(v: int, table: str, chain: str, rule: list[str]) -> bool:
    return _ipt(v, table, "-C", chain, *rule, check=False).returncode == 0


def _ensure(v: int, table: str, chain: str, rule: list[str], insert: bool = False) -> None:
    if not _exists(v, table, chain, rule):
        _ipt(v, table, "-I" if insert else "-A", chain, *rule)


def _chain_exists(v: int, table: str, chain: str) -> bool:
    return _ipt(v, table, "-S", chain, check=False).returncode == 0


def _ensure_chain(v: int, table: str, chain: str) -> None:
    if not _chain_exists(v, table, chain):
        result = _ipt(v, table, "-N", chain, check=False)
        if result.returncode != 0 and not _chain_exists(v, table, chain):
            raise CommandFailed(
                [BINARIES[v], "-t", table, "-N", chain],
                result.returncode,
                result.stderr.decode(errors="replace"),
            )


def _delete_rule(v: int, table: str, chain: str, rule: list[str]) -> None:
    while _exists(v, table, chain, rule):
        _ipt(v, table, "-D", chain, *rule)


def _drop_chain(v: int, table: str, chain: str) -> None:
    if _chain_exists(v, table, chain):
        _ipt(v, table, "-F", chain)
        _ipt(v, table, "-X", chain)


def pod_chain(pod_id: str) -> str:
    return f"CALYX-H-{pod_id[:16]}"


class BridgeRules:
    def __init__(self, bridge: str, version: int = 4) -> None:
        self.bridge = bridge
        self.v = version
        self.hostports = f"CALYX-HP-{bridge}"
        self.postrouting = f"CALYX-PR-{bridge}"
        self.forward = f"CALYX-FW-{bridge}"

    def _jumps(self) -> list[tuple[str, str, list[str]]]:
        local = ["-m", "addrtype", "--dst-type", "LOCAL"]
        return [
            ("nat", "PREROUTING", [*local, "-j", self.hostports]),
            ("nat", "OUTPUT", [*local, "-j", self.hostports]),
            ("nat", "POSTROUTING", ["-j", self.postrouting]),
            ("filter", "FORWARD", ["-j", self.forward]),
        ]

    def _chains(self) -> tuple[tuple[str, str], ...]:
        return (("nat", self.hostports), ("nat", self.postrouting), ("filter", self.forward))

    def ensure_network(self, subnet: Network) -> None:
        v = self.v
        for table, chain in self._chains():
            _ensure_chain(v, table, chain)
        net = str(subnet)
        # Leaving the pod network (not the bridge): pod-to-pod traffic keeps its source address, also
        # between the subnets a bridge can carry after a pod CIDR change.
        _ensure(v, "nat", self.postrouting, ["-s", net, "!", "-o", self.bridge, "-j", "MASQUERADE"])
        if v == 4:
            _ensure(v, "nat", self.postrouting, ["-s", "127.0.0.0/8", "-o", self.bridge, "-j", "MASQUERADE"])
        # A pod reaching a hostPort (its own or another pod's) through a host address: without this the
        # answer would go straight back over the bridge, bypassing the host's reverse NAT.
        hairpin = ["-s", net, "-o", self.bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"]
        _ensure(v, "nat", self.postrouting, hairpin)
        _ensure(v, "filter", self.forward, ["-i", self.bridge, "-j", "ACCEPT"])
        _ensure(v, "filter", self.forward, ["-o", self.bridge, "-j", "ACCEPT"])
        for table, chain, rule in self._jumps():
            _ensure(v, table, chain, rule, insert=True)

    def remove_network(self) -> None:
        """Idempotent. Looks first whether any chain exists, so a family never used costs three calls."""
        if not any(_chain_exists(self.v, table, chain) for table, chain in self._chains()):
            return
        for table, chain, rule in self._jumps():
            if _chain_exists(self.v, table, rule[-1]):
                _delete_rule(self.v, table, chain, rule)
        for table, chain in self._chains():
            _drop_chain(self.v, table, chain)

    def _pod_jump(self, pod_id: str) -> list[str]:
        return ["-m", "comment", "--comment", f"calyx pod {pod_id}", "-j", pod_chain(pod_id)]

    def add_pod(self, pod_id: str, ip: str, port_mappings: list[dict[str, Any]]) -> None:
        """DNAT the pod's hostPorts of this family to ``ip``, in one iptables-restore transaction (the
        chain and its jump appear together or not at all). SCTP only where the kernel takes the rule
        (else a warning)."""
        mappings = [m for m in port_mappings if m.get("host_port")]
        rules = [r for r in (_dnat_rule(self.v, ip, m) for m in mappings) if r]
        if not rules:
            return
        chain = pod_chain(pod_id)
        jump = f"-A {self.hostports} {_quoted(self._pod_jump(pod_id))}"
        try:
            _restore_nat(self.v, [f":{chain} - [0:0]", *(f"-A {chain} {r}" for r in rules), jump])
        except CommandFailed:
            if not any("-p sctp" in r for r in rules):
                raise
            log.warning("sctp hostPorts not supported by this kernel; skipped", extra={"pod_id": pod_id})
            rules = [r for r in rules if "-p sctp" not in r]
            if rules:
                _restore_nat(self.v, [f":{chain} - [0:0]", *(f"-A {chain} {r}" for r in rules), jump])

    def remove_pod(self, pod_id: str) -> None:
        """One transaction when everything is there, else rule by rule, idempotently. A pod without
        hostPorts has no chain, and then no jump either (iptables keeps none to a missing chain)."""
        chain = pod_chain(pod_id)
        if not _chain_exists(self.v, "nat", chain):
            return
        try:
            _restore_nat(
                self.v,
                [f"-D {self.hostports} {_quoted(self._pod_jump(pod_id))}", f"-F {chain}", f"-X {chain}"],
            )
            return
        except CommandFailed:
            pass
        if _chain_exists(self.v, "nat", self.hostports):
            _delete_rule(self.v, "nat", self.hostports, self._pod_jump(pod_id))
        _drop_chain(self.v, "nat", chain)


def _quoted(args: list[str]) -> str:
    """Arguments as one iptables-restore line (it understands double quotes, not shell quoting)."""
    for arg in args:
        if '"' in arg or "\n" in arg:
            raise ValueError(f"iptables argument {arg!r} cannot be quoted")
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def _restore_nat(v: int, lines: list[str]) -> None:
    text = "*nat\n" + "\n".join(lines) + "\nCOMMIT\n"
    proc.run([f"{BINARIES[v]}-restore", "-w", "10", "--noflush"], TIMEOUT_S, input=text.encode())


def _dnat_rule(v: int, ip: str, m: dict[str, Any]) -> str | None:
    """The DNAT rule of one hostPort mapping in family ``v``; None when the mapping is for the other
    family (see the module docstring) or its protocol is unknown."""
    host_ip = m.get("host_ip") or ""
    if host_ip and ipaddress.ip_address(host_ip).version != v:
        return None
    protocol = m.get("protocol", "tcp")
    if protocol not in PROTOCOLS:
        return None
    rule = ["-p", protocol]
    if host_ip and not ipaddress.ip_address(host_ip).is_unspecified:
        rule += ["-d", host_ip]
    target = f"[{ip}]" if v == 6 else ip
    rule += ["--dport", str(int(m["host_port"])), "-j", "DNAT", "--to-destination"]
    rule.append(f"{target}:{int(m['container_port'])}")
    return _quoted(rule)
