"""Names the hosts file lists are answered from it in the caller's thread (cri/images/resolver.py): no
lookup thread is started for them, so lookups stuck on a dead nameserver cannot hold them up
(tests/e2e/test_hostile_resolver.py shows that against a nameserver that never answers)."""

from __future__ import annotations

from pathlib import Path

from cri.images.resolver import Resolver, hosts_file_addresses

HOSTS = """\
# a registry mirror, with aliases
10.1.2.3   mirror.invalid-calyx.test   Mirror-Alias   # trailing comment
not-an-address mirror.invalid-calyx.test
fe80::7%lo mirror.invalid-calyx.test
10.1.2.3 MIRROR.invalid-calyx.test
#10.9.9.9 commented.invalid-calyx.test
10.1.2.4 other.invalid-calyx.test mirror.invalid-calyx.test.example
"""


def test_a_listed_name_gets_the_files_addresses_in_order_without_a_lookup_thread(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    resolver = Resolver(hosts_file=hosts)
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
    listed = Resolver(hosts_file=hosts)
    assert "127.0.0.1" in listed.resolve("localhost", 5000, 30) and listed.threads == 1
    missing = Resolver(hosts_file=tmp_path / "nosuch")
    assert "127.0.0.1" in missing.resolve("localhost", 5000, 30)
    assert missing.threads == 1
