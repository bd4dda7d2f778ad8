"""Host name lookups that the caller waits for only as long as it has.

getaddrinfo cannot be interrupted, and with a nameserver that never answers it blocks for as long as
resolv.conf allows (timeout x attempts x nameservers: minutes), past any pull's deadline. Lookups run
on a few shared daemon threads instead and the caller waits only for its time left; a lookup still
hanging then holds its pool thread, not the caller. However many pulls ask a dead resolver, it holds at
most ``workers`` threads (the rest wait in the queue, and are dropped there once their caller gave up),
and the threads never keep the daemon from exiting. When nsswitch.conf has the hosts file asked
before DNS (Debian's ``hosts: files dns``), a name that file lists (a registry mirror, say) is answered
from it in the caller's thread: it never waits behind lookups stuck on a dead nameserver.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calyx_base.workers import Workers

WORKERS = 4  # lookups in flight at once; a dead nameserver holds each for minutes
THREAD_NAME = "resolver"
HOSTS_FILE = Path("/etc/hosts")
NSSWITCH_FILE = Path("/etc/nsswitch.conf")


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
    them; names in ``hosts_file`` are answered from it without the pool when ``nsswitch_file`` has
    that file asked first, as getaddrinfo would."""

    def __init__(
        self, workers: int = WORKERS, hosts_file: Path = HOSTS_FILE, nsswitch_file: Path = NSSWITCH_FILE
    ) -> None:
        self._pool = Workers(THREAD_NAME, workers)
        self._hosts_file = hosts_file if hosts_file_first(nsswitch_file) else None

    @property
    def threads(self) -> int:
        return self._pool.threads

    def resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of ``host`` for a TCP connection to ``port``, in getaddrinfo's order (IPv6 ones
        with their zone). TimeoutError once ``timeout`` seconds have passed without an answer; the
        resolver's own error (socket.gaierror) if it has none. A name the hosts file lists gets that
        file's addresses, in its order, at once (if it is asked first)."""
        if self._hosts_file is not None:
            listed = _addresses(hosts_file_addresses(self._hosts_file, host), port)
            if listed:
                return listed
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
        lookup.addresses = _unique(found)


def hosts_file_first(nsswitch_file: Path) -> bool:
    """Whether glibc asks the hosts file (``files``) before DNS, per the ``hosts:`` line of
    ``nsswitch_file``; ``[...]`` actions are skipped. Without that file or line glibc asks DNS first."""
    try:
        text = nsswitch_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        database, sep, sources = line.split("#", 1)[0].partition(":")
        if not sep or database.strip() != "hosts":
            continue
        names = re.sub(r"\[[^]]*\]", " ", sources).split()
        if "files" not in names:
            return False
        return "dns" not in names or names.index("files") < names.index("dns")
    return False


def hosts_file_addresses(hosts_file: Path, host: str) -> list[str]:
    """The addresses ``hosts_file`` lists for ``host`` (as a canonical name or an alias, in any case),
    in the file's order, as glibc's files source reads it: ``#`` starts a comment, a line is an
    address then its names. Nothing if the file is missing or unreadable (the nameservers may still
    know the name)."""
    try:
        text = hosts_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    wanted = host.lower()
    found = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if wanted in (name.lower() for name in fields[1:]):
            found.append(fields[0])
    return found


def _addresses(literals: list[str], port: int) -> list[str]:
    """Address literals (from the hosts file) as getaddrinfo gives them, numerically (it asks nobody);
    one it does not take as an address is skipped, as glibc skips such a line."""
    found = []
    for literal in literals:
        try:
            found += socket.getaddrinfo(literal, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except OSError:
            continue
    return _unique(found)


def _unique(found: list[tuple[Any, ...]]) -> list[str]:
    """The hosts of getaddrinfo's answers, each once, in its order (IPv6 ones with their zone)."""
    hosts: list[str] = []
    for *_, address in found:
        host = str(address[0])
        if len(address) == 4 and address[3]:
            host = f"{host}%{address[3]}"  # a link-local IPv6 address needs its zone to be reached
        if host not in hosts:
            hosts.append(host)
    return hosts


_shared: Resolver | None = None
_shared_lock = threading.Lock()


def shared() -> Resolver:
    """The daemon's one resolver: its bound holds across all pulls. Made under a lock: pulls that start
    together must not each make one (functools.cache did, and each had its own threads)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Resolver()
        return _shared
