"""The last check before a generated request is sent: nothing in it may reach the host outside what the
run owns. The strategies already aim there; this net catches the combinations they can still make.

What it enforces, on every message anywhere in a request:
- container and exec commands are ``values.harmless`` (else ``true``), and an ExecSync of the endless
  loop has a timeout;
- absolute host paths (mounts, pod log dirs, log paths, seccomp profiles) lie in the scratch tree, with
  no ``..`` and no symlink leading out; devices are the allowed ones or in the scratch tree;
- an absolute cgroup parent stays under the run's prefix;
- a pod CIDR names only subnets of the run's claimed networks;
- hostPorts are the ports the test holds;
- PullImage names the loopback registry (or a closed loopback port) and only the harmless images.

Each rewrite is counted by kind (``Net.rewrites``) so a run shows how often the net had to act.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from pathlib import Path

from google.protobuf.message import Message

from calyx_base.errors import CalyxError
from cri.api import api_pb2 as pb
from cri.images import reference
from tests.fuzz.values import LOOP, harmless
from tests.fuzz.world import DEVICES, HARMLESS_IMAGES, World

PULL_HOSTS_EXTRA = {"127.0.0.1:1", "[::1]:1"}


class Net:
    def __init__(self, world: World) -> None:
        self.world = world
        self.rewrites: Counter[str] = Counter()

    # --- checks ------------------------------------------------------------------------------------

    def in_scratch(self, path: str) -> bool:
        """Absolute ``path`` stays in the scratch tree, whatever of it exists (symlinks followed)."""
        if "\x00" in path:
            return True  # no syscall takes it: refused before any use
        root = str(self.world.scratch)
        if ".." in Path(path).parts:
            return False
        real = os.path.realpath(path)
        return (real == root or real.startswith(root + "/")) and os.path.normpath(path).startswith(root)

    def host_path_ok(self, path: str) -> bool:
        return not path.startswith("/") or self.in_scratch(path)

    def cidr_ok(self, cidr: str) -> bool:
        v4, v6 = (ipaddress.ip_network(c) for c in self.world.claimed())
        for part in cidr.split(","):
            try:
                network = ipaddress.ip_network(part.strip(), strict=False)
            except ValueError:
                continue  # refused by the daemon
            inside = network.version == 4 and network.subnet_of(v4)  # type: ignore[arg-type]
            inside = inside or (network.version == 6 and network.subnet_of(v6))  # type: ignore[arg-type]
            if not inside:
                return False
        return True

    def pull_ok(self, name: str) -> bool:
        try:
            ref = reference.parse(name)
        except CalyxError:
            return True  # refused before any connection
        if ref.domain in PULL_HOSTS_EXTRA:
            return True
        if ref.domain != self.world.registry:
            return False
        return any(ref.name == f"{self.world.registry}/{n.rsplit(':', 1)[0]}" for n in HARMLESS_IMAGES) or (
            ref.path.startswith("cxfz/")
        )

    # --- the walk ----------------------------------------------------------------------------------

    def make_safe(self, message: Message) -> Message:
        """``message`` with every unsafe value replaced (in place); returns it."""
        self._visit(message)
        return message

    def _fix(self, kind: str) -> None:
        self.rewrites[kind] += 1

    def _visit(self, m: Message) -> None:
        name = m.DESCRIPTOR.name
        scratch = self.world.scratch
        if name == "ContainerConfig":
            argv = [*m.command, *m.args] if m.command else list(m.args)
            if not harmless(argv):
                self._fix("command")
                del m.command[:]
                del m.args[:]
                m.command.append("true")
            if m.log_path.startswith("/") and not self.in_scratch(m.log_path):
                self._fix("log_path")
                m.log_path = str(scratch / "logs" / "c.log")
        elif name in ("ExecSyncRequest", "ExecRequest") and not harmless(list(m.cmd)):
            self._fix("exec")
            del m.cmd[:]
            m.cmd.append("true")
        elif name == "ExecSyncRequest" and m.timeout <= 0 and list(m.cmd) == LOOP:
            # No timeout is no timeout (CRI): an ExecSync of a loop that never ends rightly never returns.
            self._fix("exec_forever")
            m.timeout = 5
        elif name == "Mount" and not self.host_path_ok(m.host_path):
            self._fix("mount")
            m.host_path = str(scratch / "vol")
        elif name == "Device" and m.host_path not in DEVICES and not self.host_path_ok(m.host_path):
            self._fix("device")
            m.host_path = "/dev/null"
        elif name == "PodSandboxConfig" and not self.host_path_ok(m.log_directory):
            self._fix("log_directory")
            m.log_directory = str(scratch / "logs")
        elif name == "LinuxPodSandboxConfig" and m.cgroup_parent.startswith("/"):
            normal = os.path.normpath(m.cgroup_parent)
            prefix = self.world.cgroup_prefix
            if not (normal == prefix or normal.startswith(prefix + "/")):
                self._fix("cgroup_parent")
                m.cgroup_parent = prefix
        elif name == "SecurityProfile" and not self.host_path_ok(m.localhost_ref):
            self._fix("profile")
            m.localhost_ref = str(scratch / "seccomp" / "allow.json")
        elif name == "NetworkConfig" and not self.cidr_ok(m.pod_cidr):
            self._fix("pod_cidr")
            m.pod_cidr = self.world.cidrs()[0]
        elif name == "PortMapping" and 0 < m.host_port <= 65535 and m.host_port not in self.world.ports:
            self._fix("host_port")
            m.host_port = self.world.ports[0]
        elif name == "PullImageRequest" and not self.pull_ok(m.image.image):
            self._fix("pull")
            m.image.image = self.world.image_names()[0]
        for field in ("seccomp_profile_path",):
            if field in m.DESCRIPTOR.fields_by_name:
                path = getattr(m, field).removeprefix("localhost/")
                if path.startswith("/") and not self.in_scratch(path):
                    self._fix("profile")
                    setattr(m, field, "localhost/" + str(scratch / "seccomp" / "allow.json"))
        for field, value in m.ListFields():
            if field.type != field.TYPE_MESSAGE or field.message_type.GetOptions().map_entry:
                continue
            for item in value if field.is_repeated else [value]:
                self._visit(item)


__all__ = ["Net", "pb"]
