"""Who may reach Calyx's state: root alone, except what a container in a pod user namespace must pass.

Container dirs hold root filesystems with the setuid binaries of any image, config.json holds env values
that came from Kubernetes Secrets, the store holds every record. No other host user may read them or
pass through to them (the CVE-2021-41091 class: a host user running a container's setuid binary). So:

- the state root and the run root are 0711: searchable, never listable;
- ``<root>/containers`` is 0711 too, and each container dir is 0700, or 0710 with the group of the
  container's root when its pod has a user namespace: runc mounts the rootfs from inside that namespace
  (as an unprivileged host uid), so that group, and no other user, must pass through;
- every other entry of both roots (the store and its -wal/-shm, pods, images, pins, the pods' /dev/shm,
  runc's state, conmon's exit files and sockets) is 0700 or 0600;
- files Calyx writes are 0600, except the pod's hosts/hostname/resolv.conf, which containers bind-mount
  and read as any user: 0644, inside a 0700 dir.

``prepare`` makes this layout at start and tightens what an older Calyx left open (it made everything
0755 and 0644); the modes are also set where each thing is made, so nothing is open until a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from calyx_base.errors import InvalidArgument

log = logging.getLogger("cri.statedirs")

SEARCHABLE = 0o711  # state root, run root, <root>/containers
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SHARED_WITH_GROUP = 0o710  # a container dir whose pod has a user namespace (group: the container's root)

CONTAINERS = "containers"
EXEC_DIR = "exec"  # <container dir>/exec: the process specs of runc exec
# Entries of the two roots made at start with PRIVATE_DIR, so that no later mkdir makes them 0755.
ROOT_DIRS = ("pods", "images")
RUN_DIRS = ("ns", "shm", "exits", "sockets")


def prepare(root: Path, run_root: Path, handler_roots: list[Path], keep: list[Path]) -> None:
    """Make the state layout with its modes and tighten an existing one. ``handler_roots``: the OCI
    runtimes' state dirs (made private when they lie in the run root); ``keep``: paths left as they
    are (the CRI socket, which has a mode of its own)."""
    for top in (root, run_root):
        top.mkdir(parents=True, exist_ok=True)
        os.chmod(top, SEARCHABLE)
    containers = root / CONTAINERS
    private_dir(containers)
    os.chmod(containers, SEARCHABLE)
    for name in ROOT_DIRS:
        private_dir(root / name)
    for name in RUN_DIRS:
        private_dir(run_root / name)
    for handler_root in handler_roots:
        if run_root in handler_root.parents:
            private_dir(handler_root)
    kept = {str(p) for p in keep} | {str(containers)}
    for top in (root, run_root):
        for entry in _entries(top):
            if str(entry) not in kept:
                _tighten(entry)
    for entry in _entries(containers):
        tighten_container_dir(entry)


def private_dir(path: Path, group: int | None = None) -> Path:
    """Make ``path`` (and missing parents) and give it mode 0700, or 0710 with ``group``."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if group is None:
        os.chmod(path, PRIVATE_DIR)
    else:
        os.chown(path, 0, group)
        os.chmod(path, SHARED_WITH_GROUP)
    return path


def make_dirs(path: Path) -> None:
    """mkdir -p where each dir made is 0700 (dirs already there keep their modes: they are not ours)."""
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR)
            os.chmod(directory, PRIVATE_DIR)


def make_log_dir(path: Path, what: str, object_id: str) -> None:
    """kubelet's log dir (mkdir -p). One that cannot be made (a component longer than NAME_MAX, a file
    in the way) is the request's fault, not an internal error."""
    try:
        make_dirs(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise InvalidArgument(f"{what} {str(path)!r} cannot be made: {reason}", object_id) from None
    if not path.is_dir():
        raise InvalidArgument(f"{what} {str(path)!r} is not a directory", object_id)


def make_log_file(path: str, object_id: str) -> bool:
    """Create the CRI log file conmon appends to, so that one it could not open (a name longer than
    NAME_MAX, a directory in its place) is the request's error naming it, not conmon's exit. True if
    the file is new (a failed create then removes it). ``path`` is the string conmon gets (as a Path,
    "d/" would lose the slash that makes it a directory)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        if os.path.isdir(path):
            raise InvalidArgument(f"log_path {path!r} is a directory", object_id) from None
        return False
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise InvalidArgument(f"log_path {path!r} cannot be created: {reason}", object_id) from None
    os.close(fd)
    return True


def tighten_container_dir(path: Path) -> None:
    """A container dir made by an older Calyx: 0700 (0710 if it has a group: a user-namespaced pod's),
    and its files (config.json, state.json, conmon's pid files...) and exec specs 0600. Its upper, work
    and rootfs dirs stay as they are: they are the container's own."""
    try:
        st = path.lstat()
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    _chmod(path, SHARED_WITH_GROUP if st.st_gid != 0 else PRIVATE_DIR)
    for entry in (*_entries(path), *_entries(path / EXEC_DIR)):
        _tighten(entry, dirs=entry.name == EXEC_DIR)


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _tighten(path: Path, dirs: bool = True) -> None:
    """Take group and other permissions off the file ``path`` (a dir too, with ``dirs``); symlinks,
    sockets and fifos are left alone."""
    try:
        st = path.lstat()
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode) and dirs:
        _chmod(path, PRIVATE_DIR)
    elif stat.S_ISREG(st.st_mode):
        _chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def _chmod(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.lstat().st_mode) != mode:
            os.chmod(path, mode)  # a dir or a regular file (lstat'ed): root's own tree, no link to follow
            log.info("tightened", extra={"path": str(path), "mode": oct(mode)})
    except OSError as exc:
        log.warning("cannot tighten", extra={"path": str(path), "error": str(exc)})
