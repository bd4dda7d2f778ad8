"""Names the hosts file lists are answered from it in the caller's thread (cri/images/resolver.py): no
lookup thread is started for them, so lookups stuck on a dead nameserver cannot hold them up
(tests/e2e/test_hostile_resolver.py shows that against a nameserver that never answers). Only when
nsswitch.conf has that file asked before DNS, as getaddrinfo would."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cri.images import resolver
from cri.images.resolver import Resolver, hosts_file_addresses, hosts_file_first

HOSTS = """\
# a registry mirror, with aliases
10.1.2.3   mirror.invalid-calyx.test   Mirror-Alias   # trailing comment
not-an-address mirror.invalid-calyx.test
fe80::7%lo mirror.invalid-calyx.test
10.1.2.3 MIRROR.invalid-calyx.test
#10.9.9.9 commented.invalid-calyx.test
10.1.2.4 other.invalid-calyx.test mirror.invalid-calyx.test.example
"""


def files_first(tmp_path: Path) -> Path:
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("passwd: files\nhosts:          files dns\n")
    return nsswitch


def test_a_listed_name_gets_the_files_addresses_in_order_without_a_lookup_thread(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    resolver = Resolver(hosts_file=hosts, nsswitch_file=files_first(tmp_path))
    # Any case, as a name or an alias; a line whose address is not one is skipped; each address once.
    assert resolver.resolve("mirror.invalid-calyx.test", 5000, 1) == ["10.1.2.3", "fe80::7%1"]
    assert resolver.resolve("mirror-alias", 5000, 1) == ["10.1.2.3"]
    assert resolver.threads == 0
    assert hosts_file_addresses(hosts, "commented.invalid-calyx.test") == []
    assert hosts_file_addresses(hosts, "invalid-calyx.test") == []


def test_a_name_the_file_does_not_list_is_looked_up_on_the_pool(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.2.3 mirror.invalid-calyx.test\n")
    # localhost from the host's own resolver (its /etc/hosts): asked on a lookup thread, as before.
    listed = Resolver(hosts_file=hosts, nsswitch_file=files_first(tmp_path))
    assert "127.0.0.1" in listed.resolve("localhost", 5000, 30) and listed.threads == 1
    missing = Resolver(hosts_file=tmp_path / "nosuch", nsswitch_file=files_first(tmp_path))
    assert "127.0.0.1" in missing.resolve("localhost", 5000, 30)
    assert missing.threads == 1


def test_the_file_is_asked_first_only_where_nsswitch_says_so(tmp_path: Path) -> None:
    nsswitch = tmp_path / "nsswitch.conf"
    cases = {
        "hosts: files dns\n": True,
        "hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n": True,
        "hosts: files\n": True,
        "hosts: dns files\n": False,
        "hosts: dns [!UNAVAIL=return] files\n": False,
        "hosts: mymachines resolve [!UNAVAIL=return] myhostname\n": False,
        "# hosts: files dns\nhosts: dns files\n": False,
        "passwd: files\n": False,
    }
    for text, first in cases.items():
        nsswitch.write_text(text)
        assert hosts_file_first(nsswitch) is first, text
    assert hosts_file_first(tmp_path / "nosuch") is False


def test_with_dns_asked_first_a_listed_name_is_looked_up_on_the_pool(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.2.3 localhost\n")
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("hosts: dns files\n")
    resolver = Resolver(hosts_file=hosts, nsswitch_file=nsswitch)
    # the host's resolver answers, not the file given: not 10.1.2.3, and from a lookup thread
    found = resolver.resolve("localhost", 5000, 30)
    assert "10.1.2.3" not in found and resolver.threads == 1


def test_pulls_that_start_together_share_one_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []

    class SlowToMake(Resolver):
        def __init__(self) -> None:
            made.append(self)
            time.sleep(0.2)  # as reading nsswitch.conf lets other threads run
            super().__init__()

    monkeypatch.setattr(resolver, "Resolver", SlowToMake)
    monkeypatch.setattr(resolver, "_shared", None)
    got: list[Resolver] = []
    callers = [threading.Thread(target=lambda: got.append(resolver.shared())) for _ in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(made) == 1 and got == made * 8
