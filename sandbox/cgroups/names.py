"""The two syntaxes of a cgroup parent that kubelet sends, checked and turned into cgroup paths.

kubelet speaks its own cgroup driver's syntax in ``cgroup_parent``: with ``cgroupDriver: systemd`` a slice
unit name (``kubepods-besteffort-pod<uid>.slice``), with ``cgroupfs`` an absolute path
(``/kubepods/besteffort/pod<uid>``). The systemd driver also takes a path of slices (``/test.slice``,
``/kubepods.slice/kubepods-pod<uid>.slice``), as critest sends and containerd and CRI-O accept: its last
component is the unit. A parent in the other syntax means kubelet and Calyx disagree on the
driver; it is refused up front so that no container ends up in a cgroup nobody accounts for.
"""

from __future__ import annotations

import re

from calyx_base.errors import InvalidArgument

_UNIT_CHARS = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
_PATH_PART = re.compile(r"^[^\x00/]+$")
MAX_UNIT_NAME = 255


def check_slice(parent: str) -> str:
    """``parent`` if it is a valid slice unit name, else InvalidArgument naming it."""
    if not parent.endswith(".slice") or "/" in parent:
        raise InvalidArgument(
            f"cgroup parent {parent!r} is not a systemd slice name (the systemd cgroup driver expects "
            "a name such as kubepods-besteffort-pod<uid>.slice or a path of slices such as /test.slice)"
        )
    stem = parent[: -len(".slice")]
    if parent == "-.slice":
        return parent
    if (
        not stem
        or len(parent) > MAX_UNIT_NAME
        or not _UNIT_CHARS.match(parent)
        or stem.startswith("-")
        or stem.endswith("-")
        or "--" in stem
    ):
        raise InvalidArgument(f"cgroup parent {parent!r} is not a valid systemd slice name")
    return parent


def slice_unit(parent: str) -> str:
    """The slice unit a systemd-driver parent names: ``parent`` itself if it is a slice name, the last
    component of a path of slices (each component checked), else InvalidArgument naming ``parent``."""
    if not parent.startswith("/"):
        return check_slice(parent)
    components = parent[1:].split("/")
    for component in components:
        try:
            check_slice(component)
        except InvalidArgument:
            raise InvalidArgument(
                f"cgroup parent {parent!r} is not a path of systemd slices ({component!r} is no slice "
                "name; the systemd cgroup driver expects a path such as /kubepods.slice/kubepods-pod1.slice)"
            ) from None
    return components[-1]


def slice_path(parent: str) -> str:
    """The cgroup path of a slice: each dash-separated prefix is a parent slice.

    ``kubepods-besteffort-pod1.slice`` ->
    ``/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice``
    (the same expansion systemd and runc's systemd driver make); ``-.slice`` is the root.
    """
    check_slice(parent)
    if parent == "-.slice":
        return "/"
    stem = parent[: -len(".slice")]
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def check_path(parent: str) -> str:
    """``parent`` if it is an absolute, normalised cgroup path, else InvalidArgument naming it."""
    if not parent.startswith("/"):
        raise InvalidArgument(
            f"cgroup parent {parent!r} is not an absolute cgroup path (the cgroupfs cgroup driver expects "
            "a path such as /kubepods/besteffort/pod<uid>)"
        )
    parts = [p for p in parent.split("/") if p]
    if any(p in (".", "..") or not _PATH_PART.match(p) for p in parts) or "//" in parent:
        raise InvalidArgument(f"cgroup parent {parent!r} is not a normalised cgroup path")
    return "/" + "/".join(parts)


def check_id(container_id: str) -> str:
    """Container ids become unit and directory names: nothing that could leave the parent."""
    if not container_id or not re.fullmatch(r"[A-Za-z0-9_.-]+", container_id) or container_id in (".", ".."):
        raise InvalidArgument(f"{container_id!r} cannot name a cgroup")
    return container_id
