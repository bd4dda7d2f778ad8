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
import socket
import threading
from dataclasses import dataclass, field

from calyx_base.workers import Workers

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
    """getaddrinfo on a bounded pool of daemon threads (calyx_base/workers.py), started as lookups need
    them."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._pool = Workers(THREAD_NAME, workers)

    @property
    def threads(self) -> int:
        return self._pool.threads

    def resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of ``host`` for a TCP connection to ``port``, in getaddrinfo's order (IPv6 ones
        with their zone). TimeoutError once ``timeout`` seconds have passed without an answer; the
        resolver's own error (socket.gaierror) if it has none."""
        lookup = _Lookup(host, port)
        self._pool.submit(lambda: self._answer(lookup))
        if not lookup.done.wait(timeout):
            lookup.abandoned = True
            raise TimeoutError(f"no answer for {host} from the resolver in {timeout:.1f} s")
        if lookup.error is not None:
            raise lookup.error
        return lookup.addresses

    def _answer(self, lookup: _Lookup) -> None:
        try:
            if not lookup.abandoned:  # its caller gave up while it waited in the queue
                self._lookup(lookup)
        finally:
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
