"""Notice when a pod's PID namespace holder dies while the daemon runs.

A pod sharing one PID namespace is dead once its catatonit is gone: the kernel refuses new members of a
PID namespace without init, and every process in it was killed with it. The watcher holds a pidfd per
holder (pidfds work for processes that are not our children, so holders from before a restart are
watched too) and, when one becomes readable, hands the pod id to ``on_exit`` in a thread of its own.
The callback is expected to check the pod's state under its lock: our own stop also kills holders.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger("cri.pods.watch")


class HolderWatch:
    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._fds: dict[int, str] = {}  # pidfd -> pod id
        self._poll = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pod-holder-watch", daemon=True)
        self._thread.start()

    def add(self, pod_id: str, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fire(pod_id)
            return
        os.set_inheritable(fd, False)
        with self._lock:
            self._fds[fd] = pod_id
            self._poll.register(fd, select.POLLIN)
        os.write(self._wake_w, b"x")

    def _fire(self, pod_id: str) -> None:
        name = f"holder-exit-{pod_id[:12]}"
        threading.Thread(target=self._call, args=(pod_id,), name=name, daemon=True).start()

    def _call(self, pod_id: str) -> None:
        try:
            self._on_exit(pod_id)
        except Exception:
            log.exception("handling a dead PID holder failed", extra={"pod_id": pod_id})

    def _loop(self) -> None:
        while not self._closed:
            for fd, _event in self._poll.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    pod_id = self._fds.pop(fd, None)
                    self._poll.unregister(fd)
                os.close(fd)
                if pod_id is not None and not self._closed:
                    self._fire(pod_id)

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
