"""What every pod of one built-in network shares: the bridge with a gateway address per subnet, the host's
forwarding sysctls, and the network's chains in iptables (and ip6tables for IPv6 subnets).

They are made for the first pod and then kept for the daemon's life and beyond (a restart finds them),
until ``calyx cleanup`` takes them away: tearing a bridge down and making it again costs the kernel more
than anything a pod does. ``intact`` is the cheap look a pod's setup takes (sysfs and /proc/sys reads and
one netlink dump, no program run); ``ensure`` checks everything, the chains from one iptables-save per
family, and adds what is missing with at most one iptables-restore per family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from calyx_base.errors import CommandFailed
from sandbox.bridge import iptables, links
from sandbox.bridge.ipam import Network, gateway_of
from sandbox.bridge.iptables import BridgeRules, Ruleset

log = logging.getLogger("sandbox.bridge")


@dataclass
class Repair:
    """What ``ensure`` found missing and made again (empty when everything was there)."""

    made: list[str] = field(default_factory=list)
    bridge_created: bool = False
    saved: dict[int, Ruleset] = field(default_factory=dict)  # each family's rules as found (before)


class SharedParts:
    def __init__(self, bridge: str) -> None:
        self.bridge = bridge

    def sysctls(self, subnets: list[Network]) -> dict[str, str]:
        """Host sysctls the families need, with their value. IPv6 forwarding is host-wide (``all``):
        a host interface with accept_ra=1 then stops taking router advertisements (kubelet's CNI
        bridge plugin does the same)."""
        wanted = {}
        if any(s.version == 4 for s in subnets):
            wanted["net/ipv4/ip_forward"] = "1"
            wanted[f"net/ipv4/conf/{self.bridge}/route_localnet"] = "1"
        if any(s.version == 6 for s in subnets):
            wanted["net/ipv6/conf/all/forwarding"] = "1"
        return wanted

    def intact(self, subnets: list[Network]) -> bool:
        """Whether the bridge is there and up with every gateway address, and the sysctls are set.
        (The chains are not looked at here: that takes a program run. A pod's hostPort rules find a
        missing chain themselves, and every start checks them.)"""
        if not links.is_up(self.bridge):
            return False
        if any(links.sysctl(path) != value for path, value in self.sysctls(subnets).items()):
            return False
        return not links.missing_gateways(self.bridge, [gateway_of(s) for s in subnets])

    def ensure(self, subnets: list[Network], drop_pods: set[str] | None = None) -> Repair:
        """Make whatever of the network is missing for ``subnets``; with ``drop_pods``, also remove the
        hostPort rules of these pods (recovery: pods that are gone) in the same transaction."""
        repair = Repair()
        gateways = [gateway_of(s) for s in subnets]
        if not links.link_exists(self.bridge):
            repair.made.append(f"bridge {self.bridge}")
        else:
            repair.made += [] if links.is_up(self.bridge) else [f"bridge {self.bridge} up"]
            missing = links.missing_gateways(self.bridge, gateways)
            repair.made += [f"gateway {g} on {self.bridge}" for g in missing]
        _, repair.bridge_created = links.ensure_bridge(self.bridge, gateways)
        for path, value in self.sysctls(subnets).items():
            if links.sysctl(path) != value:
                links.set_sysctl(path, value)
                repair.made.append(f"sysctl {path}")
        for version in sorted({s.version for s in subnets}):
            rules = BridgeRules(self.bridge, version)
            saved = repair.saved[version] = iptables.save(version)
            lines = rules.missing(saved, subnets)
            repair.made += [f"{iptables.BINARIES[version]} {line}" for ls in lines.values() for line in ls]
            for pod_id in sorted(drop_pods or ()):
                lines["nat"] += rules.pod_removal(saved, pod_id)["nat"]
            iptables.restore(version, lines)
        if repair.made:
            log.warning(
                "built-in network parts were missing; made again",
                extra={"bridge": self.bridge, "made": "; ".join(repair.made)},
            )
        return repair

    def remove(self) -> list[str]:
        """Remove everything of the network from the host: the jumps into its chains, its chains and
        those of its pods' hostPorts (iptables and ip6tables), and the bridge. Returns what went."""
        removed: list[str] = []
        for version, binary in iptables.BINARIES.items():
            try:
                saved = iptables.save(version)
            except CommandFailed as exc:  # no ip6tables on a host without IPv6: nothing of ours there
                log.info("cannot list rules; skipped", extra={"binary": binary, "error": str(exc)})
                continue
            lines = BridgeRules(self.bridge, version).removal(saved)
            iptables.restore(version, lines)
            removed += [f"{binary} {line}" for ls in lines.values() for line in ls if line.startswith("-X")]
        if links.delete_link(self.bridge):
            removed.append(f"bridge {self.bridge}")
        return removed
