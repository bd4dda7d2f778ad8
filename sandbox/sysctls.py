"""Pod sysctls: only namespaced ones, applied inside the pod's own namespaces.

A sysctl outside the pod's namespaces would change the node for everyone, so only those the kernel keeps
per namespace are accepted: ``net.*`` (the pod's netns), ``kernel.shm*``, ``kernel.msg*``,
``kernel.sem`` and ``fs.mqueue.*`` (the pod's IPC namespace). Names and values are checked strictly:
a value may not carry a second assignment (the ``a=b+c=d`` trick that once let a pod set
``kernel.core_pattern`` on the host), nor a newline or a path component that leaves /proc/sys.
"""

from __future__ import annotations

import re
from pathlib import Path

from calyx_base import proc
from calyx_base.errors import CommandFailed, InvalidArgument

_NAME = re.compile(r"^[a-z0-9_]+([./][A-Za-z0-9_:@+-]+)+$")
_VALUE = re.compile(r"^[A-Za-z0-9 \t_.:,/-]*$")
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_IPC_EXACT = ("kernel.sem",)


def normalize(name: str) -> str:
    """``net/ipv4/ip_forward`` and ``net.ipv4.ip_forward`` are the same sysctl."""
    return name.replace("/", ".")


def namespace_of(name: str) -> str | None:
    """ "net", "ipc" or None (not namespaced)."""
    name = normalize(name)
    if name.startswith("net."):
        return "net"
    if name.startswith(_IPC_PREFIXES) or name in _IPC_EXACT:
        return "ipc"
    return None


def validate(sysctls: dict[str, str], own_net: bool, own_ipc: bool) -> None:
    """Refuse anything that is not a namespaced sysctl of a namespace the pod owns."""
    for name, value in sysctls.items():
        if not _NAME.fullmatch(name) or ".." in name:
            raise InvalidArgument(f"sysctl name {name!r} is not valid")
        if not _VALUE.fullmatch(value):
            raise InvalidArgument(
                f"sysctl {name}: value {value!r} may only hold letters, digits, spaces and _.:,/- "
                "(no second assignment)"
            )
        kind = namespace_of(name)
        if kind is None:
            raise InvalidArgument(
                f"sysctl {name} is not namespaced; a pod may only set net.*, kernel.shm*, "
                "kernel.msg*, kernel.sem and fs.mqueue.*"
            )
        if kind == "net" and not own_net:
            raise InvalidArgument(
                f"sysctl {name} needs the pod's own network namespace (pod uses the host's)"
            )
        if kind == "ipc" and not own_ipc:
            raise InvalidArgument(f"sysctl {name} needs the pod's own IPC namespace (pod uses the host's)")


def apply(
    sysctls: dict[str, str],
    netns: Path | None,
    ipcns: Path | None,
    pod_id: str,
    timeout: float = 10.0,
    userns: Path | None = None,
) -> None:
    """Write the sysctls from a process that joined the pod's namespaces (validated before).

    With the pod's own ``userns`` the writer joins it too (as its root): the kernel grants write access
    to an IPC namespace's sysctls only to the root of the user namespace that owns it, not to the
    host's root (measured: "permission denied on key kernel.shm_rmid_forced")."""
    if not sysctls:
        return
    argv = ["nsenter"]
    if userns is not None:
        argv.append(f"--user={userns}")
    if netns is not None:
        argv.append(f"--net={netns}")
    if ipcns is not None:
        argv.append(f"--ipc={ipcns}")
    argv += ["--", "sysctl", "-q", "-w"]
    argv += [f"{normalize(name)}={value}" for name, value in sorted(sysctls.items())]
    try:
        proc.run(argv, timeout, object_id=pod_id)
    except CommandFailed as exc:
        # "sysctl: setting key ...: Invalid argument", "sysctl: cannot stat /proc/sys/...": a value
        # the kernel refuses or a sysctl it does not have is the request's; nsenter failing is not.
        if "sysctl: " not in exc.stderr:
            raise
        refused = exc.stderr.strip()[-1000:]
        raise InvalidArgument(f"the kernel refused the pod's sysctls: {refused}", pod_id) from None
