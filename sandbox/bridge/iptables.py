"""iptables rules of the built-in network, all in chains of its own so that nothing of others is touched.

Per bridge (names carry the bridge name so several networks on one host stay apart), made once and
kept for the daemon's life (sandbox/bridge/shared.py):
  nat  CALYX-HP-<br>   hostPort dispatch, jumped to from PREROUTING and OUTPUT for local destinations
                       (OUTPUT makes hostPorts work from the host itself, 127.0.0.1 included)
  nat  CALYX-PR-<br>   masquerade: pod traffic leaving the subnet, loopback-sourced traffic DNATed
                       into the bridge (needs route_localnet on the bridge), and pods reaching
                       hostPorts through a host address (hairpin)
  filter CALYX-FW-<br> accept forwarding to and from the bridge
Per pod with hostPorts: nat CALYX-H-<id16> with the pod's DNAT rules, jumped to from CALYX-HP-<br>; it
is added and removed by one iptables-restore per IP family. A pod without hostPorts costs no call.

The network's chains are checked from one iptables-save per family (``Ruleset``): what is missing is
added, or everything of the bridge removed, by one iptables-restore per family. (A chain declared in
an iptables-restore input is flushed even with --noflush, so only missing chains are declared.)

IPv6 (dual-stack or IPv6-only pod networks) uses the same chain names in ip6tables (family 6), with two
differences: there is no loopback rule, since the kernel never routes ::1 off the host (no
route_localnet for IPv6), so a hostPort is not reachable at [::1], only at the host's IPv6 addresses;
and a hostPort mapping goes to the family of its host_ip (none or "" maps both families of the pod,
"0.0.0.0" or an IPv4 address only IPv4, "::" or an IPv6 address only IPv6).
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from calyx_base import proc
from calyx_base.errors import CommandFailed
from sandbox.bridge.ipam import Network

log = logging.getLogger("sandbox.bridge.iptables")

TIMEOUT_S = 30.0
PROTOCOLS = ("tcp", "udp", "sctp")
BINARIES = {4: "iptables", 6: "ip6tables"}
TABLES = ("nat", "filter")
Lines = dict[str, list[str]]  # table -> iptables-restore lines


def pod_chain(pod_id: str) -> str:
    return f"CALYX-H-{pod_id[:16]}"


def pod_comment(pod_id: str) -> str:
    return f"calyx pod {pod_id}"


@dataclass
class Ruleset:
    """The nat and filter tables of one family as iptables-save prints them: chains, and each chain's
    rules as argument tuples (what follows ``-A CHAIN``)."""

    chains: dict[str, set[str]] = field(default_factory=dict)
    rules: dict[str, dict[str, list[tuple[str, ...]]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Ruleset:
        found = cls()
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
                found.chains.setdefault(table, set())
                found.rules.setdefault(table, {})
            elif line.startswith(":") and table:
                found.chains[table].add(line[1:].split()[0])
            elif line.startswith("-A ") and table:
                parts = shlex.split(line)
                found.rules[table].setdefault(parts[1], []).append(tuple(parts[2:]))
        return found

    def has_chain(self, table: str, chain: str) -> bool:
        return chain in self.chains.get(table, set())

    def rules_of(self, table: str, chain: str) -> list[tuple[str, ...]]:
        return self.rules.get(table, {}).get(chain, [])

    def jumps_to(self, table: str, targets: set[str]) -> list[tuple[str, tuple[str, ...]]]:
        """(chain, rule) of every rule of ``table`` whose target is one of ``targets``."""
        return [
            (chain, rule)
            for chain, rules in self.rules.get(table, {}).items()
            for rule in rules
            if _target(rule) in targets
        ]


def _target(rule: tuple[str, ...]) -> str:
    return rule[rule.index("-j") + 1] if "-j" in rule[:-1] else ""


def save(v: int) -> Ruleset:
    return Ruleset.parse(proc.run([f"{BINARIES[v]}-save"], TIMEOUT_S).stdout.decode(errors="replace"))


def restore(v: int, lines: Lines) -> None:
    """One iptables-restore (--noflush) of ``lines``, every table in one transaction."""
    text = "".join(
        f"*{table}\n" + "".join(f"{line}\n" for line in ls) + "COMMIT\n" for table, ls in lines.items() if ls
    )
    if text:
        proc.run([f"{BINARIES[v]}-restore", "-w", "10", "--noflush"], TIMEOUT_S, input=text.encode())


def _quoted(args: Iterable[str]) -> str:
    """Arguments as one iptables-restore line (it understands double quotes, not shell quoting)."""
    out = []
    for arg in args:
        if '"' in arg or "\n" in arg:
            raise ValueError(f"iptables argument {arg!r} cannot be quoted")
        out.append(f'"{arg}"' if " " in arg else arg)
    return " ".join(out)


class BridgeRules:
    """The rules of one bridge network in one IP family."""

    def __init__(self, bridge: str, version: int = 4) -> None:
        self.bridge = bridge
        self.v = version
        self.hostports = f"CALYX-HP-{bridge}"
        self.postrouting = f"CALYX-PR-{bridge}"
        self.forward = f"CALYX-FW-{bridge}"

    def chains(self) -> tuple[tuple[str, str], ...]:
        return (("nat", self.hostports), ("nat", self.postrouting), ("filter", self.forward))

    def jumps(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(table, built-in chain, rule) jumping into the network's chains, as iptables-save prints them."""
        local = ("-m", "addrtype", "--dst-type", "LOCAL")
        return [
            ("nat", "PREROUTING", (*local, "-j", self.hostports)),
            ("nat", "OUTPUT", (*local, "-j", self.hostports)),
            ("nat", "POSTROUTING", ("-j", self.postrouting)),
            ("filter", "FORWARD", ("-j", self.forward)),
        ]

    def chain_rules(self, subnets: list[Network]) -> list[tuple[str, str, tuple[str, ...]]]:
        """(table, chain, rule) the network's chains hold for ``subnets`` (those of this family)."""
        br = self.bridge
        out: list[tuple[str, str, tuple[str, ...]]] = []
        for subnet in (s for s in subnets if s.version == self.v):
            net = str(subnet)
            # Leaving the pod network (not the bridge): pod-to-pod traffic keeps its source address, also
            # between the subnets a bridge can carry after a pod CIDR change.
            out.append(("nat", self.postrouting, ("-s", net, "!", "-o", br, "-j", "MASQUERADE")))
            # A pod reaching a hostPort (its own or another pod's) through a host address: without this
            # the answer would go straight back over the bridge, bypassing the host's reverse NAT.
            hairpin = ("-s", net, "-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE")
            out.append(("nat", self.postrouting, hairpin))
        if self.v == 4:
            out.append(("nat", self.postrouting, ("-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE")))
        out.append(("filter", self.forward, ("-i", br, "-j", "ACCEPT")))
        out.append(("filter", self.forward, ("-o", br, "-j", "ACCEPT")))
        return out

    def missing(self, saved: Ruleset, subnets: list[Network]) -> Lines:
        """The lines that add what of the network ``saved`` lacks (nothing when it is whole)."""
        lines: Lines = {t: [] for t in TABLES}
        for table, chain in self.chains():
            if not saved.has_chain(table, chain):
                lines[table].append(f":{chain} - [0:0]")
        for table, chain, rule in self.chain_rules(subnets):
            if rule not in saved.rules_of(table, chain):
                lines[table].append(f"-A {chain} {_quoted(rule)}")
        for table, chain, rule in self.jumps():
            if rule not in saved.rules_of(table, chain):
                lines[table].append(f"-I {chain} {_quoted(rule)}")
        return lines

    def removal(self, saved: Ruleset) -> Lines:
        """The lines that remove everything of the network ``saved`` holds: the jumps into its chains,
        the chains, and the chains of the pods its hostPort chain jumps to."""
        lines: Lines = {t: [] for t in TABLES}
        for table in TABLES:
            ours = {c for t, c in self.chains() if t == table and saved.has_chain(table, c)}
            pods = {
                _target(r)
                for r in saved.rules_of(table, self.hostports)
                if _target(r).startswith("CALYX-H-") and saved.has_chain(table, _target(r))
            }
            for chain, rule in saved.jumps_to(table, ours):
                if chain not in ours:
                    lines[table].append(f"-D {chain} {_quoted(rule)}")
            gone = sorted(ours) + sorted(pods)
            lines[table] += [f"-F {c}" for c in gone] + [f"-X {c}" for c in gone]
        return lines

    def pod_removal(self, saved: Ruleset, pod_id: str) -> Lines:
        """The lines that remove what ``saved`` holds of the pod's hostPort rules."""
        chain = pod_chain(pod_id)
        lines: list[str] = [
            f"-D {source} {_quoted(rule)}"
            for source, rule in saved.jumps_to("nat", {chain})
            if source == self.hostports
        ]
        if saved.has_chain("nat", chain):
            lines += [f"-F {chain}", f"-X {chain}"]
        return {"nat": lines}

    def _pod_jump(self, pod_id: str) -> list[str]:
        return ["-m", "comment", "--comment", pod_comment(pod_id), "-j", pod_chain(pod_id)]

    def pod_intact(self, saved: Ruleset, pod_id: str) -> tuple[bool, bool]:
        """Whether ``saved`` has the pod's chain with rules in it, and the jump into it."""
        chain = pod_chain(pod_id)
        jumped = any(source == self.hostports for source, _ in saved.jumps_to("nat", {chain}))
        return bool(saved.rules_of("nat", chain)), jumped

    def add_pod(self, pod_id: str, ip: str, port_mappings: list[dict[str, Any]], jump: bool = True) -> None:
        """DNAT the pod's hostPorts of this family to ``ip``, in one iptables-restore transaction (the
        chain and its jump appear together or not at all; a chain that is there is filled anew, and
        ``jump=False`` keeps the jump that is there). SCTP only where the kernel takes the rule (else a
        warning)."""
        rules = host_port_rules(self.v, ip, port_mappings)
        if not rules:
            return
        chain = pod_chain(pod_id)
        jumps = [f"-A {self.hostports} {_quoted(self._pod_jump(pod_id))}"] if jump else []
        try:
            restore(self.v, {"nat": [f":{chain} - [0:0]", *(f"-A {chain} {r}" for r in rules), *jumps]})
        except CommandFailed:
            if not any("-p sctp" in r for r in rules):
                raise
            log.warning("sctp hostPorts not supported by this kernel; skipped", extra={"pod_id": pod_id})
            rules = [r for r in rules if "-p sctp" not in r]
            if rules:
                restore(self.v, {"nat": [f":{chain} - [0:0]", *(f"-A {chain} {r}" for r in rules), *jumps]})

    def remove_pod(self, pod_id: str, known: bool = True) -> None:
        """Remove the pod's chain and its jump: one transaction when both are there (``known``: the pod
        is known to have hostPort rules of this family), else from what iptables-save shows."""
        chain = pod_chain(pod_id)
        if known:
            try:
                jump = f"-D {self.hostports} {_quoted(self._pod_jump(pod_id))}"
                restore(self.v, {"nat": [jump, f"-F {chain}", f"-X {chain}"]})
                return
            except CommandFailed:
                pass  # half there (an interrupted attempt) or removed by someone else
        restore(self.v, self.pod_removal(save(self.v), pod_id))


def host_port_rules(v: int, ip: str, port_mappings: list[dict[str, Any]]) -> list[str]:
    """The DNAT rules of the pod's hostPort mappings in family ``v`` (empty: no hostPort of it)."""
    rules = (_dnat_rule(v, ip, m) for m in port_mappings if m.get("host_port"))
    return [r for r in rules if r]


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
