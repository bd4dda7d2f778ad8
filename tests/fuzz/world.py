"""What one fuzz run owns and knows: its scratch tree, cgroup prefix, claimed networks, held ports,
the registry's test images, and every pod, container and image id the daemon has handed out so far.

``World.resolve`` turns the ``Ref`` values of a generated request into the strings and numbers to send.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.values import Ref

# Images whose default command is busybox's ``sh`` (ends at once without stdin): the only ones the fuzz
# pulls, so that a container with no command runs nothing but that.
HARMLESS_IMAGES = [
    "calyx-test/busybox:latest",
    "calyx-test/busybox:1.35",
    "calyx-test/user-uid:latest",
    "calyx-test/user-name:latest",
    "calyx-test/user-uid-gid:latest",
    "calyx-test/multilayer:latest",
    "calyx-test/zstd:latest",
    "calyx-test/plain:latest",
    "calyx-test/docker:latest",
    "calyx-test/multiarch:latest",
    "e2e-test-images/busybox:1.29-2",
]
# Devices a fuzzed container may be given (besides nodes in the scratch tree).
DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/nosuch-cxfz"]
PROFILES = {
    "allow.json": json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}),
    "errno.json": json.dumps({"defaultAction": "SCMP_ACT_ERRNO"}),
    "bad-syscall.json": json.dumps(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["cxfz_nosuch"], "action": "SCMP_ACT_ERRNO"}],
        }
    ),
    "bad-action.json": json.dumps({"defaultAction": "SCMP_ACT_NOPE"}),
    "bad-arch.json": json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NOPE"]}),
    "list.json": "[]",
    "empty.json": "",
    "garbage.json": "{\x00not json",
}
SCRATCH_NAMES = [
    "vol",
    "file",
    "link",
    "dangling",
    "shared",
    "newdir",
    "logs",
    "devdir",
    "seccomp",
    "cxfzmark",
]


def make_scratch(root: Path) -> None:
    """The tree host paths of generated requests point into (nothing in it leads outside it)."""
    (root / "vol").mkdir(parents=True)
    (root / "vol" / "file").write_text("in a volume\n")
    (root / "file").write_text("a file\n")
    (root / "link").symlink_to("vol")
    (root / "dangling").symlink_to("nosuch")
    (root / "logs").mkdir()
    (root / "shared").mkdir()
    (root / "devdir").mkdir()
    os.mknod(root / "devdir" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    (root / "devdir" / "plain").write_text("not a device\n")
    (root / "seccomp").mkdir()
    (root / "seccomp" / "dir.json").mkdir()
    for name, text in PROFILES.items():
        (root / "seccomp" / name).write_text(text)


@dataclass
class World:
    scratch: Path
    cgroup_prefix: str  # "/cxfz-<token>", the daemon's default parent too
    net: int  # the claimed network number: 10.250.<net>.0/24 and fd42:f2:<net>::/48
    ports: list[int]  # host ports the test holds (bound), the only ones hostPorts may use
    registry: str  # host:port of the loopback registry
    pods: list[str] = field(default_factory=list)  # every pod id handed out, removed ones too
    containers: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)

    # --- names -------------------------------------------------------------------------------------

    def image_names(self) -> list[str]:
        return [f"{self.registry}/{name}" for name in HARMLESS_IMAGES]

    def pull_names(self) -> list[str]:
        """What PullImage may ask for: the harmless images, and names that fail on the loopback."""
        reg = self.registry
        return [
            *self.image_names(),
            f"{reg}/cxfz/nosuch:latest",
            f"{reg}/calyx-test/busybox:nosuchtag",
            f"{reg}/calyx-test/busybox@sha256:{'0' * 64}",
            "127.0.0.1:1/cxfz/closed:latest",
            "[::1]:1/cxfz/closed:latest",
        ]

    def cidrs(self) -> list[str]:
        v4, v6 = f"10.250.{self.net}", f"fd42:f2:{self.net}"
        return [
            f"{v4}.0/24",
            f"{v4}.128/25",
            f"{v4}.64/28",
            f"{v4}.0/30",
            f"{v4}.4/31",
            f"{v4}.9/32",
            f"{v6}::/64",
            f"{v6}::/120",
            f"{v6}::/127",
            f"{v4}.0/24,{v6}::/64",
            f"{v6}::/64,{v4}.0/24",
            f"{v4}.0/24,{v4}.128/25",
        ]

    def claimed(self) -> tuple[str, str]:
        return f"10.250.{self.net}.0/24", f"fd42:f2:{self.net}::/48"

    # --- resolution --------------------------------------------------------------------------------

    def resolve(self, ref: Ref) -> str | int:
        kind = ref.kind
        if kind in ("pod", "ctr"):
            return self._id(self.pods if kind == "pod" else self.containers, ref)
        if kind == "image":
            return self._image(ref)
        if kind == "pull":
            names = self.pull_names()
            return names[ref.index % len(names)]
        if kind == "scratch":
            return str(self.scratch.joinpath(*ref.parts)) if ref.parts else str(self.scratch)
        if kind == "logdir":
            return str(self.scratch.joinpath("logs", *ref.parts))
        if kind == "cgroup":
            return "/".join([self.cgroup_prefix, *ref.parts])
        if kind == "cidr":
            cidrs = self.cidrs()
            return cidrs[ref.index % len(cidrs)]
        if kind == "port":
            return self.ports[ref.index % len(self.ports)]
        if kind == "seccomp":
            names = [*PROFILES, "dir.json", "nosuch.json"]
            return str(self.scratch / "seccomp" / names[ref.index % len(names)])
        if kind == "device":
            scratch = [
                str(self.scratch / "devdir" / "null"),
                str(self.scratch / "devdir"),
                str(self.scratch / "file"),
            ]
            pool = [*DEVICES, *scratch]
            return pool[ref.index % len(pool)]
        raise ValueError(f"unknown reference kind {kind!r}")

    @staticmethod
    def _id(ids: list[str], ref: Ref) -> str:
        value = ids[ref.index % len(ids)] if ids else "0123456789abcdef" * 4
        form = ref.form
        if form == "prefix":
            return value[: 1 + (ref.index * 7) % 40]
        if form == "upper":
            return value.upper()
        if form == "padded":
            return f" {value}"
        if form == "extended":
            return value + "0"
        if form == "truncated":
            return value[:-1]
        return value

    def _image(self, ref: Ref) -> str:
        names = self.image_names()
        name = names[ref.index % len(names)]
        ids = self.image_ids or ["sha256:" + "0" * 64]
        image_id = ids[ref.index % len(ids)]
        form = ref.form
        if form in ("full", "padded"):
            return name if form == "full" else f" {name}"
        if form == "prefix":
            return image_id.removeprefix("sha256:")[:12]
        if form == "upper":
            return image_id
        if form == "extended":
            return image_id.removeprefix("sha256:")
        return name.rsplit(":", 1)[0]  # truncated: no tag (":latest" by default)
