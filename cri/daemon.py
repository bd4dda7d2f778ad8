"""``calyx serve``: start order, readiness and graceful shutdown.

Order: take the socket lock, open the store, build the subsystems, serve on the socket (Version and
Status answer at once, everything else waits), recover, mark ready, tell systemd READY=1. SIGTERM or
SIGINT stop serving, wait for calls in flight, close the subsystems; containers keep running. SIGHUP
reloads registries, pinned images and the log level from the config files (cri/reload.py).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from calyx_base import log as calyx_log
from cri import __version__, statedirs
from cri.build import build_daemon
from cri.config import Config
from cri.reload import reload as reload_config
from cri.server.service import build_server

log = logging.getLogger("cri.daemon")


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why, for the operator."""


def notify_systemd(state: str, address: str | None) -> None:
    """sd_notify(3): a datagram to ``address`` (systemd's $NOTIFY_SOCKET, taken from the environment at
    start) when run by systemd with Type=notify; nothing without one."""
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed", extra={"state": state, "error": exc.strerror})


def claim_socket(path: Path) -> IO[bytes]:
    """Lock ``<socket>.lock`` for the daemon's lifetime and clear a stale socket file.

    Another live instance holds the lock: refuse to start. A socket file without a lock holder is
    stale (a crashed daemon) and is replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # held open for the daemon's lifetime
    lock = os.fdopen(
        os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600), "ab"
    )
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StartupError(f"another calyx instance is serving {path} (it holds {path}.lock)") from None
        raise
    if path.exists() or path.is_symlink():
        if _socket_answers(path):
            lock.close()
            raise StartupError(f"{path} is in use by another process")
        path.unlink()
        log.info("removed stale socket", extra={"socket": str(path)})
    return lock


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def _reload(config: Config, load_config: Callable[[], Config] | None) -> None:
    """SIGHUP (cri/reload.py): take up the config files again."""
    if load_config is None:
        log.warning("SIGHUP ignored: this daemon was given no config files to reload")
        return
    reload_config(config, load_config)


def serve(config: Config, load_config: Callable[[], Config] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads what it can from ``load_config()``."""
    calyx_log.setup(config.server.log_level)
    # Ours only: runc, conmon and CNI plugins must not inherit it. runc given NOTIFY_SOCKET forwards
    # the container's sd_notify to it (binding a socket in its state dir, which fails on long paths).
    notify_address = os.environ.pop("NOTIFY_SOCKET", None)
    socket_path = Path(config.server.socket)
    started = time.monotonic()
    try:
        lock = claim_socket(socket_path)
    except StartupError as exc:
        log.error("cannot start", extra={"reason": str(exc)})
        raise
    statedirs.prepare(
        config.root,
        config.run_root,
        [
            Path(h.runtime_root) if h.runtime_root else config.run_root / name
            for name, h in config.runtime.handlers.items()
        ],
        keep=[socket_path, socket_path.parent],
    )
    daemon = build_daemon(config)
    runtime = daemon.runtime
    server = build_server(daemon)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    os.chmod(socket_path, int(config.server.socket_mode, 8))
    log.info("serving", extra={"socket": str(socket_path), "version": __version__, "pid": os.getpid()})

    stop = threading.Event()
    reload_wanted = threading.Event()
    wake = threading.Event()  # the main thread sleeps on it; signal handlers only set flags

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            reload_wanted.set()
        else:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    try:
        runtime.recover()
        notify_systemd("READY=1", notify_address)
        log.info("ready", extra={"startup_ms": (time.monotonic() - started) * 1000})
        while not stop.is_set():
            wake.wait(3600)
            wake.clear()
            if reload_wanted.is_set() and not stop.is_set():
                reload_wanted.clear()
                _reload(config, load_config)
    finally:
        notify_systemd("STOPPING=1", notify_address)
        daemon.events.close()  # end GetContainerEvents streams so they do not hold up the stop
        server.stop(config.server.shutdown_grace_seconds).wait()
        runtime.close()
        if socket_path.exists():
            socket_path.unlink()
        lock.close()
        log.info("stopped")
    return 0
