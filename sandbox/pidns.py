"""The pod's shared PID namespace, held by a minimal init (``catatonit -P``) for the pod's lifetime.

``unshare --pid=PIN --fork --kill-child catatonit -P`` creates the namespace, pins it, and runs catatonit
as its PID 1: containers join the pin by path, see catatonit as PID 1, and orphans are reaped by it.
``--kill-child`` makes catatonit die with its unshare parent. The pin is useless once catatonit is gone
(the kernel refuses new members of a PID namespace whose init has exited), so holder and pin are always
released together.

The holder is found again by the namespace itself (every process whose ``/proc/PID/ns/pid`` is the
pinned namespace), never by a PID remembered across a restart, so PID reuse cannot make us kill a
stranger and a holder spawned just before a crash is still found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from calyx_base import poll
from calyx_base.errors import Internal
from sandbox import namespaces

log = logging.getLogger("sandbox.pidns")

CATATONIT = "catatonit"


def pin_path(run_root: Path, pod_id: str) -> Path:
    return namespaces.pin_dir(run_root, "pid") / pod_id


def _reap_later(child: subprocess.Popen[bytes]) -> None:
    """Wait for the unshare process in the background so it does not stay a zombie of the daemon."""
    threading.Thread(target=child.wait, name=f"reap-{child.pid}", daemon=True).start()


def _child_of(pid: int) -> int | None:
    try:
        children = Path("/proc", str(pid), "task", str(pid), "children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _pin_from_child(child: subprocess.Popen[bytes], pin: Path) -> bool:
    """Pin the PID namespace of the holder's forked catatonit once it exists (user namespace pods).

    Inside the pod's user namespace ``unshare --pid=PIN`` cannot bind-mount the pin (the host's mount
    namespace is not owned by it), so the daemon pins ``/proc/<catatonit>/ns/pid`` from outside."""
    init = _child_of(child.pid)
    if init is None or _ns_inode(Path("/proc", str(init), "ns", "pid")) in (
        None,
        _ns_inode(Path("/proc", str(child.pid), "ns", "pid")),
    ):
        return False
    namespaces.bind_pin(f"/proc/{init}/ns/pid", pin)
    return True


def start_holder(run_root: Path, pod_id: str, timeout: float = 10.0, user_ns: Path | None = None) -> Path:
    """Start the pod's PID namespace holder; return the pin path once the namespace is usable.

    With ``user_ns`` (the pod's pinned user namespace) the PID namespace is made inside it, so that it
    is owned by it and the pod's containers can mount /proc."""
    binary = shutil.which(CATATONIT)
    if binary is None:
        raise Internal("catatonit is not installed; it holds the PID namespace of pods with pid=POD", pod_id)
    pin = pin_path(run_root, pod_id)
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.touch(exist_ok=True)
    # stderr goes to an unlinked temporary file, not a pipe: catatonit keeps it for its lifetime, and a
    # warning written to a pipe nobody reads (or one already closed: SIGPIPE) could block or kill it.
    with tempfile.TemporaryFile() as errors:
        if user_ns is None:
            argv = ["unshare", f"--pid={pin}", "--fork", "--kill-child", binary, "-P"]
        else:
            argv = [
                "nsenter",
                f"--user={user_ns}",
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                binary,
                "-P",
            ]
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,  # signals to the daemon's group do not reach the holder
            close_fds=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while not _catatonit_runs(pin):
                if user_ns is not None and not namespaces.is_pinned(pin) and _pin_from_child(child, pin):
                    continue
                if child.poll() is not None:
                    errors.seek(0)
                    message = errors.read().decode(errors="replace").strip()
                    raise Internal(f"PID namespace holder exited with {child.returncode}: {message}", pod_id)
                if time.monotonic() > deadline:
                    raise Internal(f"PID namespace holder did not start within {timeout:g}s", pod_id)
                time.sleep(0.002)
        except BaseException:
            child.kill()
            child.wait()
            release(pin)
            raise
    _reap_later(child)
    return pin


def _catatonit_runs(pin: Path) -> bool:
    """Whether the namespace's init has become catatonit: until the forked child has exec'd it, it is
    still ``unshare`` (or dies, if the exec fails), and the pod is not ready."""
    for pid in holder_pids(pin):
        with contextlib.suppress(OSError):
            if Path("/proc", str(pid), "comm").read_text().strip() == CATATONIT:
                return True
    return False


def _ns_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def holder_pids(pin: Path) -> list[int]:
    """PIDs (host view) of processes inside the pinned PID namespace; empty when none or not pinned."""
    if not namespaces.is_pinned(pin):
        return []
    inode = _ns_inode(pin)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if _ns_inode(Path("/proc", entry, "ns", "pid")) == inode:
            pids.append(int(entry))
    return pids


def init_pid(pin: Path) -> int | None:
    """The host PID of the namespace's PID 1 (catatonit), or None when it is gone."""
    for pid in holder_pids(pin):
        try:
            status = Path("/proc", str(pid), "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and line.split()[-1] == "1":
                return pid
    return None


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def is_alive(pin: Path) -> bool:
    return bool(holder_pids(pin))


def release(pin: Path, timeout: float = 10.0) -> None:
    """Kill everything in the pod's PID namespace (its init first), then unmount and remove the pin."""
    pids = holder_pids(pin)
    parents = {p for p in (_parent_of(pid) for pid in pids) if p is not None}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    poll.until(lambda: not holder_pids(pin), timeout, 0.005)
    for parent in parents:  # the unshare that forked catatonit exits on its own; make sure
        if parent > 1 and _is_unshare(parent):
            with contextlib.suppress(ProcessLookupError):
                os.kill(parent, signal.SIGKILL)
    namespaces.release(pin)


def _is_unshare(pid: int) -> bool:
    try:
        return Path("/proc", str(pid), "comm").read_text().strip() == "unshare"
    except OSError:
        return False
