"""Property-based fuzz of every CRI RPC against a live daemon (issue 13): at least 10,000 generated
requests, none answered INTERNAL or UNKNOWN, the daemon alive and ready after each; then, once
everything the run made is removed, nothing left on the host, and a restarted daemon comes up ready.

CI mode: fixed seeds and a budget of a few minutes. Long mode: CALYX_FUZZ_EXAMPLES=N runs N examples
with a fresh random seed (e.g. CALYX_FUZZ_EXAMPLES=2000 for ~100,000 requests);
CALYX_FUZZ_COLLECT=1 notes each kind of failure once and goes on, reporting them all at the end.
The generators are in tests/fuzz/; what keeps the host safe is tests/fuzz/safety.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from cri.api import api_pb2 as pb
from tests.container_fixtures import CGROUP_ROOT, Cx
from tests.fault_audit import leftovers
from tests.fuzz.machine import Client, CriMachine
from tests.fuzz.safety import Net as SafetyNet
from tests.fuzz.world import World, make_scratch
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net

MIN_REQUESTS = 10_000
STEPS = 25  # rules per example (each a request, or a batch of up to 24)
# CI: rounds of ROUND examples, each round with its own fixed seed (so every CI run sends the same
# requests), until MIN_REQUESTS were sent. Shrinking replays sequences against the live daemon for
# minutes: in CI the failing request itself (in the assertion) is what a regression test needs.
ROUND, MAX_ROUNDS = 40, 12
CI_PHASES = [Phase.explicit, Phase.generate]
# Host sysctls a fuzzed pod could only reach through a validation bug: they must not change.
WATCHED_SYSCTLS = [
    "net/core/somaxconn",
    "net/ipv4/ping_group_range",
    "net/ipv4/conf/all/log_martians",
    "kernel/shm_rmid_forced",
    "kernel/msgmax",
    "fs/mqueue/msg_max",
    "kernel/sem",
]
pytestmark = pytest.mark.slow


def _sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text() for name in WATCHED_SYSCTLS}


def _held_ports(count: int) -> tuple[list[int], list[socket.socket]]:
    """Ports bound for TCP and UDP by this process for the whole run: hostPorts may only use these, so
    the DNAT rules of fuzzed pods catch nobody else's traffic."""
    ports: list[int] = []
    held: list[socket.socket] = []
    while len(ports) < count:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("0.0.0.0", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("0.0.0.0", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        held += [tcp, udp]
        ports.append(port)
    return ports, held


@dataclass
class Fuzz:
    cx: Cx
    world: World


@pytest.fixture
def fuzz(
    builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> Iterator[Fuzz]:
    prefix = f"/cxfz-{secrets.token_hex(4)}"
    scratch = short_tmp / "scratch"
    make_scratch(scratch)
    shared = scratch / "shared"
    # A shared mount in the scratch tree: bidirectional propagation has somewhere to go.
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    ports, held = _held_ports(3)
    try:
        registries = {image_registry.host: {"insecure": True}}
        net = builtin_net(config={"images": {"registries": registries}, "cgroup": {"default_parent": prefix}})
        logs = short_tmp / "podlogs"
        logs.mkdir()
        cx = Cx(net, image_registry, logs)
        cx.parents.append(prefix)
        world = World(scratch, prefix, int(net.bridge.removeprefix("cxp")), ports, image_registry.host)
        yield Fuzz(cx, world)
    finally:
        for sock in held:
            sock.close()
        subprocess.run(["umount", "-l", str(shared)], check=False)
        for d in sorted(CGROUP_ROOT.glob(f"*{prefix}"), key=str):
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()


def _summary(client: Client, examples: int, seconds: float) -> str:
    per_rpc = ", ".join(f"{m} {n}" for m, n in sorted(client.sent.items()))
    codes = ", ".join(f"{c} {n}" for c, n in client.codes.most_common())
    spent = ", ".join(f"{m} {t:.1f}" for m, t in client.seconds.most_common(8))
    rewrites = ", ".join(f"{k} {n}" for k, n in client.net.rewrites.most_common()) or "none"
    return (
        f"\nCRI fuzz: {client.total} requests in {examples} examples, {seconds:.0f} s "
        f"({client.total / max(seconds, 1e-9):.0f} requests/s)\n"
        f"  per RPC: {per_rpc}\n  status codes: {codes}\n  safety rewrites: {rewrites}\n"
        f"  seconds in calls: {sum(client.seconds.values()):.0f}, most in {spent}\n"
        f"  slowest: {client.slowest[0]:.2f} s {client.slowest[1]}\n"
        + "".join(f"  FOUND {text[:3000]}\n" for text in client.findings.values())
    )


def _run(machine: type[CriMachine], examples: int, phases: list[Phase]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=phases,
            print_blob=True,
        ),
    )


# 100-300 s by default (more on a loaded host); a long run (CALYX_FUZZ_EXAMPLES) has no limit.
@pytest.mark.timeout(0 if os.environ.get("CALYX_FUZZ_EXAMPLES") else 1800)
def test_cri_fuzz(fuzz: Fuzz, capsys: pytest.CaptureFixture[str]) -> None:
    long_run = int(os.environ.get("CALYX_FUZZ_EXAMPLES", "0"))
    daemon = fuzz.cx.daemon
    collect = os.environ.get("CALYX_FUZZ_COLLECT") == "1"
    client = Client(daemon, fuzz.world, SafetyNet(fuzz.world), collect=collect)
    CriMachine.client = client
    before = _sysctls()
    start = time.monotonic()
    examples = 0
    try:
        if long_run:  # a fresh random seed, and shrinking of what fails
            _run(CriMachine, long_run, list(Phase))
            examples = long_run
        else:  # CI: fixed seeds, one round after another until the requests are enough
            for round_seed in range(MAX_ROUNDS):
                if client.total >= MIN_REQUESTS:
                    break
                _run(seed(round_seed)(type(f"CriMachine{round_seed}", (CriMachine,), {})), ROUND, CI_PHASES)
                examples += ROUND
    finally:
        with capsys.disabled():
            print(_summary(client, examples, time.monotonic() - start))

    client.remove_everything()
    for image in daemon.images.ListImages(pb.ListImagesRequest(), timeout=30).images:
        daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)), timeout=60)
    fuzz.cx.parents.extend(sorted(client.parents - {fuzz.world.cgroup_prefix}))
    assert _left_on_host(fuzz, client, before) == []
    daemon.restart()
    assert _left_on_host(fuzz, client, before) == []
    assert not client.findings, "\n\n".join(client.findings.values())
    assert client.total >= MIN_REQUESTS, f"only {client.total} requests were sent"


def _left_on_host(fuzz: Fuzz, client: Client, sysctls: dict[str, str]) -> list[str]:
    """Once everything the run made is removed: what the daemon's objects left (tests/fault_audit.py:
    mounts, pins, veths, iptables rules, leases, cgroups, runc state, conmons, dirs, blobs), mounts that
    propagated into the scratch tree, changed host sysctls, and cgroup parents of removed pods."""
    problems = leftovers(fuzz.cx)
    scratch = str(fuzz.world.scratch)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    own = [m for m in mounts if m == f"{scratch}/shared"]
    problems += [f"mount in the scratch tree: {m}" for m in mounts if m.startswith(scratch) and m not in own]
    problems += [f"the scratch tree's own mount is there {len(own)} times"] if len(own) != 1 else []
    problems += [f"host sysctl {k} changed to {v!r}" for k, v in _sysctls().items() if sysctls[k] != v]
    for parent in sorted(client.parents):
        for d in (h / parent.lstrip("/") for h in CGROUP_ROOT.iterdir()):  # no glob: parents are fuzzed
            if d.is_dir() and not any(sub.is_dir() for sub in d.iterdir()):
                problems.append(f"cgroup parent of a removed pod: {d}")
    return problems
