"""Host name lookups that the caller waits for only as long as it has.

getaddrinfo cannot be interrupted, and with a nameserver that never answers it blocks for as long as
resolv.conf allows (timeout x attempts x nameservers: minutes), past any pull's deadline. Lookups run
on a few shared daemon threads instead and the caller waits only for its time left; a lookup still
hanging then holds its pool thread, not the caller. However many pulls ask a dead resolver, it holds at
most ``workers`` threads (the rest wait in the queue, and are dropped there once their caller gave up),
and the threads never keep the daemon from exiting.
"""

from __future__ import annotations

import functools
import queue
import socket
import threading
from dataclasses import dataclass, field

WORKERS = 4  # lookups in flight at once; a dead nameserver holds each for minutes
THREAD_NAME = "resolver"


@dataclass(eq=False)
class _Lookup:
    host: str
    port: int
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False  # the caller stopped waiting: nobody wants the answer any more
    addresses: list[str] = field(default_factory=list)
    error: OSError | None = None


class Resolver:
    """A bounded pool of threads calling getaddrinfo; threads start as lookups need them."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._workers = workers
        self._jobs: queue.SimpleQueue[_Lookup] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pending = 0  # lookups queued or running

    @property
    def threads(self) -> int:
        with self._lock:
            return len(self._threads)

    def resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of ``host`` for a TCP connection to ``port``, in getaddrinfo's order (IPv6 ones
        with their zone). TimeoutError once ``timeout`` seconds have passed without an answer; the
        resolver's own error (socket.gaierror) if it has none."""
        lookup = _Lookup(host, port)
        with self._lock:
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"{THREAD_NAME}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(lookup)
        if not lookup.done.wait(timeout):
            lookup.abandoned = True
            raise TimeoutError(f"no answer for {host} from the resolver in {timeout:.1f} s")
        if lookup.error is not None:
            raise lookup.error
        return lookup.addresses

    def _work(self) -> None:
        while True:
            lookup = self._jobs.get()
            try:
                if not lookup.abandoned:
                    self._lookup(lookup)
            finally:
                with self._lock:
                    self._pending -= 1
                lookup.done.set()

    @staticmethod
    def _lookup(lookup: _Lookup) -> None:
        try:
            found = socket.getaddrinfo(lookup.host, lookup.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            lookup.error = exc
            return
        for _, _, _, _, address in found:
            host = str(address[0])
            if len(address) == 4 and address[3]:
                host = f"{host}%{address[3]}"  # a link-local IPv6 address needs its zone to be reached
            if host not in lookup.addresses:
                lookup.addresses.append(host)


@functools.cache
def shared() -> Resolver:
    """The daemon's one resolver: its bound holds across all pulls."""
    return Resolver()
