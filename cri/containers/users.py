"""Users and groups as the image sees them: /etc/passwd and /etc/group read from the container rootfs.

The process's uid, gid and supplementary groups are resolved here, before runc runs, because the names
in ``run_as_username`` or the image's ``User`` only mean something inside the image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from calyx_base.errors import InvalidArgument

MAX_ID = 2**32 - 1  # uid_t and gid_t are 32 bits, and (uid_t)-1 means "no id"


@dataclass(frozen=True)
class ProcessUser:
    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    username: str = ""


def _read_rootfs_file(rootfs: Path, rel: str) -> list[list[str]]:
    """Colon-separated records of ``rel`` inside ``rootfs``; symlinks may not leave the rootfs."""
    path = resolve_inside(rootfs, rel)
    if path is None or not path.is_file():
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_inside(rootfs: Path, rel: str) -> Path | None:
    """``rel`` resolved with symlinks interpreted relative to ``rootfs`` (as chroot would).

    Absolute links restart at ``rootfs`` and ``..`` stops there, so the result never leaves it; None
    for a symlink loop.
    """
    current = rootfs
    parts = [p for p in rel.split("/") if p and p != "."]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != rootfs else rootfs
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = rootfs
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        current = candidate
    return current


def _int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def lookup_user(rootfs: Path, name: str) -> tuple[int, int] | None:
    for row in _read_rootfs_file(rootfs, "/etc/passwd"):
        if len(row) >= 4 and row[0] == name:
            uid, gid = _int(row[2]), _int(row[3])
            if uid is not None and gid is not None:
                return uid, gid
    return None


def user_by_uid(rootfs: Path, uid: int) -> tuple[str, int] | None:
    for row in _read_rootfs_file(rootfs, "/etc/passwd"):
        if len(row) >= 4 and _int(row[2]) == uid:
            gid = _int(row[3])
            if gid is not None:
                return row[0], gid
    return None


def lookup_group(rootfs: Path, name: str) -> int | None:
    for row in _read_rootfs_file(rootfs, "/etc/group"):
        if len(row) >= 3 and row[0] == name:
            return _int(row[2])
    return None


def groups_of(rootfs: Path, username: str, primary_gid: int) -> list[int]:
    """Gids of the groups in /etc/group that list ``username`` as a member (not the primary gid)."""
    gids: list[int] = []
    if not username:
        return gids
    for row in _read_rootfs_file(rootfs, "/etc/group"):
        if len(row) >= 4 and username in row[3].split(","):
            gid = _int(row[2])
            if gid is not None and gid != primary_gid and gid not in gids:
                gids.append(gid)
    return gids


def resolve_user(
    rootfs: Path,
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: list[int],
    strict_groups: bool,
) -> ProcessUser:
    """The process user the way kubelet and containerd expect.

    Precedence: ``run_as_user`` (uid), then ``run_as_username``, then the image's ``User``
    ("name", "uid", "name:group", "uid:gid"). ``run_as_group`` overrides the gid. Groups of the user from
    the image's /etc/group are added unless the policy is Strict; the CRI's supplemental groups always are.
    """
    uid: int
    gid: int | None = None
    username = ""
    if run_as_user is not None:
        uid = run_as_user
        found = user_by_uid(rootfs, uid)
        if found:
            username, gid = found
    elif run_as_username:
        found_user = lookup_user(rootfs, run_as_username)
        if found_user is None:
            numeric = _int(run_as_username)
            if numeric is None:
                raise InvalidArgument(f"user {run_as_username!r} is not in the image's /etc/passwd")
            uid = numeric
        else:
            uid, gid = found_user
            username = run_as_username
    else:
        uid, gid, username = _image_user(rootfs, image_user)
    if gid is None:
        gid = 0
    if run_as_group is not None:
        gid = run_as_group
    extra: list[int] = []
    if not strict_groups:
        extra.extend(groups_of(rootfs, username, gid))
    for g in supplemental_groups:
        if g not in extra:
            extra.append(g)
    for kind, value in (("uid", uid), ("gid", gid), *(("supplemental group", g) for g in extra)):
        if not 0 <= value < MAX_ID:
            raise InvalidArgument(f"{kind} {value} is not a valid id (0 to {MAX_ID - 1})")
    return ProcessUser(uid=uid, gid=gid, additional_gids=extra, username=username)


def _image_user(rootfs: Path, spec: str) -> tuple[int, int | None, str]:
    if not spec:
        root = user_by_uid(rootfs, 0)
        return 0, root[1] if root else 0, root[0] if root else "root"
    user, _, group = spec.partition(":")
    uid: int
    gid: int | None = None
    username = ""
    numeric = _int(user)
    if numeric is not None:
        uid = numeric
        by_uid = user_by_uid(rootfs, uid)
        if by_uid:
            username, gid = by_uid
    else:
        named = lookup_user(rootfs, user)
        if named is None:
            raise InvalidArgument(f"image user {user!r} is not in the image's /etc/passwd")
        uid, gid = named
        username = user
    if group:
        g = _int(group)
        if g is None:
            g = lookup_group(rootfs, group)
            if g is None:
                raise InvalidArgument(f"image group {group!r} is not in the image's /etc/group")
        gid = g
    return uid, gid, username


def make_inside(rootfs: Path, rel: str, file: bool = False) -> None:
    """mkdir -p (or touch, for ``file``) ``rel`` in the image without following a link out of it.

    Image content is untrusted: a plain mkdir on the host would follow ``/data -> /etc`` to the host's
    /etc. Each existing component is resolved inside ``rootfs`` first; only missing ones are made.
    """
    parts = [p for p in rel.split("/") if p and p != "."]
    current = rootfs
    for index, part in enumerate(parts):
        resolved = resolve_inside(rootfs, str((current / part).relative_to(rootfs)))
        if resolved is None:
            raise InvalidArgument(f"{rel!r} in the image is a symlink loop")
        if not resolved.exists():
            last = index == len(parts) - 1
            # Only the tail is missing (the existing prefix is resolved, link-free): parents are safe.
            if last and file:
                resolved.parent.mkdir(parents=True, exist_ok=True)
                resolved.touch()
            else:
                resolved.mkdir(parents=True, exist_ok=True)
        current = resolved
