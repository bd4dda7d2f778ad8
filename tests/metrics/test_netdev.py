"""Interface counters through /proc/<pid>/net/dev of a process in the namespace, checked against
rtnetlink's answer for the same namespace, with real traffic; and refused for any other process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from metrics.netdev import parse, read_via_pid, read_via_pids
from metrics.network import read_netns
from metrics.readings import InterfaceReading
from tests.metrics.conftest import NetnsPair
from tests.waiting import wait_for

COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped")


@pytest.fixture
def sleeper_in() -> Iterator[object]:
    """Start ``sleep`` inside a named netns (``ip netns exec`` execs it: the PID is the sleeper's)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(netns: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
        started.append(proc)
        # The namespace is entered before the exec: once the PID runs sleep, it is inside.
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep"), "the sleeper's exec")
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _eth0(interfaces: tuple[InterfaceReading, ...]) -> InterfaceReading:
    (found,) = [i for i in interfaces if i.name == "eth0"]
    return found


def test_counters_through_a_process_are_rtnetlinks(netns_pair, sleeper_in) -> None:  # type: ignore[no-untyped-def]
    pair: NetnsPair = netns_pair()
    sleeper = sleeper_in(pair.pod)
    first = read_via_pids(pair.pod_path, [sleeper.pid])
    assert first is not None
    assert {i.name for i in first.interfaces} == {"lo", "eth0"}  # the pod's links, not the host's
    pair.send_udp(count=200, size=1000)
    # The namespace may send on its own meanwhile (IPv6 router solicitations): the file's reading
    # lies between two rtnetlink readings taken just before and just after it.
    before = read_netns(pair.pod_path)
    middle = read_via_pids(pair.pod_path, [sleeper.pid])
    after = read_netns(pair.pod_path)
    assert middle is not None
    for name in ("lo", "eth0"):
        low, mid, high = before.interface(name), middle.interface(name), after.interface(name)
        assert low is not None and mid is not None and high is not None
        for counter in COUNTERS:
            assert getattr(low, counter) <= getattr(mid, counter) <= getattr(high, counter), (name, counter)
    received = _eth0(middle.interfaces).rx_bytes - _eth0(first.interfaces).rx_bytes
    assert 200 * 1000 <= received <= 200 * 1100 + 10_000, received
    assert before.timestamp_ns <= middle.timestamp_ns <= after.timestamp_ns


def test_a_process_elsewhere_or_gone_is_not_used(netns_pair, sleeper_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pair: NetnsPair = netns_pair()
    pin = os.stat(pair.pod_path)
    elsewhere = sleeper_in(pair.peer)
    assert read_via_pid(os.getpid(), pin) is None  # the host's namespace
    assert read_via_pid(elsewhere.pid, pin) is None  # another pod's
    assert read_via_pid(0, pin) is None
    inside = sleeper_in(pair.pod)
    inside.kill()
    inside.wait()
    assert read_via_pid(inside.pid, pin) is None  # exited and reaped
    # The first PID that is inside wins; none inside gives None (the caller then asks rtnetlink).
    live = sleeper_in(pair.pod)
    sample = read_via_pids(pair.pod_path, [elsewhere.pid, inside.pid, live.pid])
    assert sample is not None and _eth0(sample.interfaces).name == "eth0"
    assert read_via_pids(pair.pod_path, [elsewhere.pid, os.getpid()]) is None
    with pytest.raises(FileNotFoundError):
        read_via_pids(str(tmp_path / "no-such-pin"), [live.pid])


def test_parse_takes_each_column_from_its_place() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|"
        "bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:  100  2  0  0  0  0  0  0  100  2  0  0  0  0  0  0\n"
        "  eth0: 5000 40  1  3  9  9  9  9 7000 50  2  4  9  9  9  9\n"
    )
    lo, eth0 = parse(text)
    assert lo == InterfaceReading("lo", 100, 100, 2, 2, 0, 0, 0, 0)
    assert eth0 == InterfaceReading(
        "eth0",
        rx_bytes=5000,
        tx_bytes=7000,
        rx_packets=40,
        tx_packets=50,
        rx_errors=1,
        tx_errors=2,
        rx_dropped=3,
        tx_dropped=4,
    )
