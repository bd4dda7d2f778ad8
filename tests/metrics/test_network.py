"""Interface counters read from inside a network namespace the test made, with real traffic."""

from __future__ import annotations

import os

import pytest

from metrics.network import read_netns


def test_bytes_sent_to_the_pod_show_in_its_rx_counters(netns_pair):
    pair = netns_pair()
    before = read_netns(pair.pod_path)
    names = {i.name for i in before.interfaces}
    assert names == {"lo", "eth0"}  # the namespace's own links, not the host's
    pair.send_udp(count=200, size=1000)
    after = read_netns(pair.pod_path)
    eth0_before, eth0 = before.interface("eth0"), after.interface("eth0")
    assert eth0_before is not None and eth0 is not None
    received = eth0.rx_bytes - eth0_before.rx_bytes
    # 200 datagrams of 1000 payload bytes, each with UDP+IP+Ethernet headers (+ARP); none lost on a veth.
    assert 200 * 1000 <= received <= 200 * 1100, received
    assert eth0.rx_packets - eth0_before.rx_packets >= 200
    # Nobody listens on port 9: the pod answers with ICMP port unreachable (rate-limited), so it sent some.
    assert eth0.tx_bytes > eth0_before.tx_bytes
    assert eth0.rx_errors == 0
    assert after.timestamp_ns > before.timestamp_ns


def test_reading_does_not_move_the_caller_or_create_namespaces(netns_pair, tmp_path):
    pair = netns_pair()
    own = os.readlink("/proc/thread-self/ns/net")
    read_netns(pair.pod_path)
    assert os.readlink("/proc/thread-self/ns/net") == own
    missing = tmp_path / "no-such-netns"
    with pytest.raises(FileNotFoundError):
        read_netns(str(missing))
    assert not missing.exists()
    not_a_netns = tmp_path / "plain-file"
    not_a_netns.write_text("")
    with pytest.raises(OSError):
        read_netns(str(not_a_netns))
