"""Linux capabilities: the default set, the kernel's full set, and CRI add/drop arithmetic."""

from __future__ import annotations

from pathlib import Path

from calyx_base.errors import InvalidArgument

# Capability numbers as the kernel defines them (include/uapi/linux/capability.h).
CAPABILITY_NAMES: list[str] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]

# The set containerd gives a non-privileged container (the Docker default).
DEFAULT_CAPABILITIES: list[str] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


def _bounding_of_this_process() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    return (1 << len(CAPABILITY_NAMES)) - 1


def host_capabilities() -> list[str]:
    """Every capability this daemon can hand on (its bounding set), the set a privileged container gets.

    The machine may lack some (CAP_SYS_RESOURCE here): asking runc for one we do not hold fails.
    """
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = len(CAPABILITY_NAMES) - 1
    bounding = _bounding_of_this_process()
    return [name for number, name in enumerate(CAPABILITY_NAMES[: last + 1]) if bounding & (1 << number)]


def normalize(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    if not upper.startswith("CAP_"):
        upper = "CAP_" + upper
    if upper not in CAPABILITY_NAMES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return upper


def compute(add: list[str], drop: list[str], privileged: bool) -> list[str]:
    """The container's capability set from the defaults and the CRI's add and drop lists.

    ``ALL`` in add starts from every capability; ``ALL`` in drop starts from none (then adds apply),
    the order containerd and CRI-O use.
    """
    available = host_capabilities()
    if privileged:
        return available
    adds = [normalize(c) for c in add]
    drops = [normalize(c) for c in drop]
    caps = list(DEFAULT_CAPABILITIES)
    if "ALL" in adds:
        caps = list(available)
    if "ALL" in drops:
        caps = []
    for cap in adds:
        if cap != "ALL" and cap not in caps:
            caps.append(cap)
    for cap in drops:
        if cap != "ALL" and cap in caps:
            caps.remove(cap)
    return [c for c in caps if c in available]
