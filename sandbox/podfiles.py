"""The files every container of a pod bind-mounts: /etc/resolv.conf, /etc/hostname, /etc/hosts.

They live in the pod's directory and are written before any container exists; /etc/hosts is rewritten
once the pod has its IP. Input is checked so that no value can add a line of its own to a file (a search
domain with a newline would otherwise inject a nameserver).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from calyx_base import files
from calyx_base.errors import InvalidArgument

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# RFC 1123 labels; kubelet sends at most 63 characters, we allow the 64 of HOST_NAME_MAX.
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*$")
_TOKEN = re.compile(r"^[^\s#;\0]+$")


@dataclass(frozen=True)
class DNS:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.servers or self.searches or self.options)


@dataclass(frozen=True)
class PodFiles:
    resolv_conf: Path
    hostname: Path
    hosts: Path


def paths(pod_dir: Path) -> PodFiles:
    return PodFiles(pod_dir / "resolv.conf", pod_dir / "hostname", pod_dir / "hosts")


def validate_hostname(hostname: str) -> None:
    if len(hostname) > 64 or not _HOSTNAME.fullmatch(hostname):
        raise InvalidArgument(
            f"hostname {hostname!r} is not a valid host name (RFC 1123, at most 64 characters)"
        )


def validate_dns(dns: DNS) -> None:
    for server in dns.servers:
        try:
            address = ipaddress.ip_address(server)
        except ValueError:
            raise InvalidArgument(f"DNS server {server!r} is not an IP address") from None
        # Python takes any text after an IPv6 '%' as its zone, a newline and a second nameserver too.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise InvalidArgument(f"DNS server {server!r}: an IPv6 zone is not allowed")
    for kind, values in (("search domain", dns.searches), ("DNS option", dns.options)):
        for value in values:
            if not _TOKEN.fullmatch(value):
                raise InvalidArgument(f"{kind} {value!r} is empty or contains whitespace, '#', ';' or NUL")


def resolv_conf_text(dns: DNS, host_resolv: Path = HOST_RESOLV_CONF) -> str:
    """The pod's resolv.conf: from ``dns`` or, when kubelet sent none, a copy of the host's."""
    if dns.empty:
        try:
            return host_resolv.read_text()
        except OSError:
            return ""
    lines = [f"nameserver {server}" for server in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_text(hostname: str, ips: list[str]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically; containers that mount it later see the whole file. It is 0644: a
    container bind-mounts it and reads it as any user; host users are kept out by its dir's mode."""
    files.replace_text(path, text, 0o644)


def write(pod_dir: Path, hostname: str, dns: DNS, ips: list[str]) -> PodFiles:
    files = paths(pod_dir)
    pod_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pod_dir.chmod(0o700)
    _write(files.resolv_conf, resolv_conf_text(dns))
    _write(files.hostname, hostname + "\n")
    _write(files.hosts, hosts_text(hostname, ips))
    return files


def write_hosts(pod_dir: Path, hostname: str, ips: list[str]) -> None:
    _write(paths(pod_dir).hosts, hosts_text(hostname, ips))
