"""Fixtures and probes for pod and network tests: daemons on private bridges/subnets, CNI conflists,
and checks run inside a pod's netns (nsenter), plus a record of what a pod leaves on the host.

Every bridge is named ``cxp<N>`` (built-in) or ``cxc<N>`` (CNI) with subnet 10.250.N.0/24 or
10.249.N.0/24, N unique per test, so tests do not step on each other or on other helpers. The built-in
network's bridge and chains outlive the last pod (until ``calyx cleanup``): teardown removes every pod,
runs ``calyx cleanup`` with the test daemon's config, then deletes whatever of the bridge and the test's
chains is still there and restores ip_forward.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2 as pb
from tests.daemon import Daemon, calyx_command

CNI_BIN = "/usr/lib/cni"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, check=False).returncode == 0


def in_netns(pin: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", f"--net={pin}", "--", *argv, check=check)


def names(line: str, name: str) -> bool:
    """``line`` names ``name`` as a whole word: cxp2 is not in another test's cxp212 or CALYX-PR-cxp21."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(name)}(?![0-9A-Za-z])", line) is not None


def iptables_save() -> str:
    return sh("iptables-save").stdout


def ip6tables_save() -> str:
    return sh("ip6tables-save").stdout


CLAIMS = Path("/tmp/calyx-test-nets")


def _claim_n() -> int:
    """A network number no other test (of any process) uses now: claimed with an O_EXCL file holding
    our PID; a claim whose process is gone is stale and taken over."""
    CLAIMS.mkdir(exist_ok=True)
    for _ in range(500):
        n = random.randint(2, 250)
        claim = CLAIMS / str(n)
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(claim.read_text() or "0")
            except (OSError, ValueError):
                continue
            if owner and Path(f"/proc/{owner}").exists():
                continue
            claim.unlink(missing_ok=True)  # stale: its test process died
            continue
        with os.fdopen(fd, "w") as out:
            out.write(str(os.getpid()))
        if link_exists(f"cxp{n}") or link_exists(f"cxc{n}"):
            continue  # left by someone else; keep the claim so nobody else picks it meanwhile
        return n
    raise RuntimeError("no free test network number")


def _release_n(n: int) -> None:
    (CLAIMS / str(n)).unlink(missing_ok=True)


def _unique_n() -> int:
    """A claimed network number for callers that do not release it (it turns stale with the process)."""
    return _claim_n()


def _drop_chains(predicate: Callable[[str], bool]) -> None:
    """Delete every iptables and ip6tables rule jumping to, and every chain named by, ``predicate``
    (test cleanup)."""
    for cmd in ("iptables", "ip6tables"):
        for table in ("nat", "filter"):
            rules = sh(cmd, "-w", "10", "-t", table, "-S", check=False).stdout.splitlines()
            for rule in rules:
                try:
                    parts = shlex.split(rule)
                except ValueError:  # a comment shlex cannot read: another test's (the fuzz's) rule
                    continue
                if parts[:1] == ["-A"] and "-j" in parts and predicate(parts[parts.index("-j") + 1]):
                    sh(cmd, "-w", "10", "-t", table, "-D", *parts[1:], check=False)
            for rule in rules:
                parts = rule.split()
                if parts[:1] == ["-N"] and predicate(parts[1]):
                    sh(cmd, "-w", "10", "-t", table, "-F", parts[1], check=False)
                    sh(cmd, "-w", "10", "-t", table, "-X", parts[1], check=False)


@dataclass
class Net:
    """One test network: the daemon and what it is named."""

    daemon: Daemon
    bridge: str
    subnet: str
    cni_dir: Path | None = None
    ipam_dir: Path | None = None  # host-local's lease files of a CNI test network

    def records(self, kind: str) -> dict[str, Any]:
        """The daemon's stored records of ``kind`` (read-only, straight from its SQLite file)."""
        db = sqlite3.connect(f"file:{self.daemon.root / 'calyx.db'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, data FROM records WHERE kind = ?", (kind,)).fetchall()
        finally:
            db.close()
        return {key: json.loads(data) for key, data in rows}

    @property
    def leases(self) -> dict[str, Any]:
        return self.records("lease")


@contextlib.contextmanager
def _host_restored(bridge: str) -> Iterator[None]:
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    forward6 = Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text()
    try:
        yield
    finally:
        if link_exists(bridge):
            sh("ip", "link", "del", bridge, check=False)
        _drop_chains(lambda chain: chain.endswith(f"-{bridge}"))
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
        Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text(forward6)  # the bridge plugin sets it


@pytest.fixture
def builtin_net(daemon_factory: Callable[..., Daemon]) -> Iterator[Callable[..., Net]]:
    """Make daemons using the built-in network on a private bridge and subnet (no CNI config)."""
    made: list[Net] = []
    stack = contextlib.ExitStack()

    def make(env: dict[str, str] | None = None, config: dict[str, Any] | None = None) -> Net:
        n = _claim_n()
        stack.callback(_release_n, n)
        bridge, subnet = f"cxp{n}", f"10.250.{n}.0/24"
        stack.enter_context(_host_restored(bridge))
        conf_dir = Path(f"/tmp/cx-nocni-{bridge}")
        conf_dir.mkdir(exist_ok=True)
        stack.callback(conf_dir.rmdir)
        table: dict[str, Any] = {
            "network": {"bridge": bridge, "subnet": subnet, "cni_conf_dir": str(conf_dir)}
        }
        for section, values in (config or {}).items():
            table.setdefault(section, {}).update(values)
        net = Net(daemon_factory(table, env=env), bridge, subnet)
        made.append(net)
        return net

    with stack:
        yield make
        for net in made:  # remove their pods and their network before the host is restored
            _remove_all_pods(net.daemon)
            cleanup(net.daemon, "--force")


def cleanup(daemon: Daemon, *flags: str) -> subprocess.CompletedProcess[str]:
    """``calyx cleanup`` with the daemon's config: its built-in network's bridge and chains go."""
    config = ["--config", str(daemon.config_file), "--config-dir", str(daemon.base / "calyx.d")]
    return calyx_command("cleanup", *config, *flags, timeout=60)


def cni_conflist(
    name: str, bridge: str, subnet: str, data_dir: Path, version: str = "1.0.0"
) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


@pytest.fixture
def cni_net(daemon_factory: Callable[..., Daemon], short_tmp: Path) -> Iterator[Callable[..., Net]]:
    """Make daemons whose conf dir holds a conflist for Debian's bridge/host-local/portmap plugins."""
    made: list[Net] = []
    stack = contextlib.ExitStack()

    def make(
        version: str = "1.0.0",
        plugins: list[dict[str, Any]] | None = None,
        start: bool = True,
        bin_dirs: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Net:
        n = _claim_n()
        stack.callback(_release_n, n)
        bridge, subnet = f"cxc{n}", f"10.249.{n}.0/24"
        stack.enter_context(_host_restored(bridge))
        conf_dir = short_tmp / f"cni{n}"
        conf_dir.mkdir()
        conflist = cni_conflist(f"calyx-test-{n}", bridge, subnet, short_tmp / f"ipam{n}", version)
        if plugins is not None:
            conflist["plugins"] = plugins
        (conf_dir / "10-test.conflist").write_text(json.dumps(conflist))
        network = {"cni_conf_dir": str(conf_dir), "cni_bin_dirs": bin_dirs or [CNI_BIN], "bridge": f"cxp{n}"}
        net = Net(daemon_factory({"network": network}, start=start, env=env), bridge, subnet, conf_dir)
        net.ipam_dir = short_tmp / f"ipam{n}" / conflist["name"]
        made.append(net)
        return net

    leaks: list[str] = []
    with stack:
        yield make
        for net in made:
            _remove_all_pods(net.daemon)
            leaks += _drop_cni_rules_of(f"calyx-test-{net.bridge.removeprefix('cxc')}")
    _drop_idle_portmap_chains()
    assert leaks == [], "CNI DEL never ran for these (removed now):\n" + "\n".join(leaks)


def _drop_cni_rules_of(network: str) -> list[str]:
    """The bridge plugin's ipMasq rules and chains (nat, CNI-<hash>) of pods on ``network`` that are
    still there once every pod is removed: a pod whose CNI DEL never ran. Deleted; returned."""
    rules = sh("iptables", "-w", "10", "-t", "nat", "-S", "POSTROUTING", check=False).stdout.splitlines()
    found = [r for r in rules if r.startswith("-A ") and f'name: \\"{network}\\"' in r]
    chains = set()
    for rule in found:
        parts = shlex.split(rule)
        sh("iptables", "-w", "10", "-t", "nat", "-D", *parts[1:], check=False)
        chains.add(parts[parts.index("-j") + 1])
    for chain in chains:
        sh("iptables", "-w", "10", "-t", "nat", "-F", chain, check=False)
        sh("iptables", "-w", "10", "-t", "nat", "-X", chain, check=False)
    return found


def _drop_idle_portmap_chains() -> None:
    """The portmap plugin leaves its top-level chains behind; remove them once no mapping uses them."""
    rules = sh(
        "iptables", "-w", "10", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT", check=False
    ).stdout.splitlines()
    if any(rule.startswith("-A CNI-HOSTPORT-DNAT") for rule in rules):
        return  # someone's pod still has hostPorts through portmap
    _drop_chains(lambda chain: chain.startswith("CNI-HOSTPORT-"))


def _remove_all_pods(daemon: Daemon) -> None:
    """Stop and remove every pod the daemon has. A daemon a test left dead (kill -9, a failpoint) is
    started again first, without failpoints, so that its recovery and the removal clean the host."""
    if daemon.proc is None or daemon.proc.poll() is not None:
        if not daemon.config_file.exists():
            return
        daemon.env.pop("CALYX_FAILPOINTS", None)
        try:
            daemon.start()
        except Exception:
            return
    with contextlib.suppress(Exception):
        for pod in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
            daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


_counter = iter(range(1, 1_000_000))


def pod_config(name: str | None = None, **kw: Any) -> pb.PodSandboxConfig:
    """A PodSandboxConfig with unique metadata; keyword arguments set top-level fields."""
    name = name or f"pod-{next(_counter)}"
    linux = kw.pop("linux", None)
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name, uid=f"uid-{name}-{random.getrandbits(32):08x}", namespace="calyx-test"
        ),
        **kw,
    )
    if linux is not None:
        config.linux.CopyFrom(linux)
    return config


def host_network_linux(pid: pb.NamespaceMode = pb.CONTAINER) -> pb.LinuxPodSandboxConfig:
    return pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE, ipc=pb.NODE, pid=pid)
        )
    )


def run_pod(daemon: Daemon, config: pb.PodSandboxConfig, handler: str = "") -> str:
    return daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=120
    ).pod_sandbox_id


def status(daemon: Daemon, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose))


def info(daemon: Daemon, pod_id: str) -> dict[str, Any]:
    return json.loads(status(daemon, pod_id, verbose=True).info["info"])


def stop_remove(daemon: Daemon, pod_id: str) -> None:
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


def pod_traces(daemon: Daemon, pod_id: str) -> list[str]:
    """Everything of ``pod_id`` still on the host (empty when the pod is fully gone)."""
    found = []
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [f"mount: {line}" for line in mountinfo.splitlines() if pod_id in line]
    for kind in ("net", "ipc", "uts", "pid", "user"):
        pin = daemon.run_root / "ns" / kind / pod_id
        if pin.exists():
            found.append(f"pin: {pin}")
    links = sh("ip", "-o", "link").stdout
    found += [f"link: {line}" for line in links.splitlines() if pod_id[:12] in line]
    found += [f"iptables: {line}" for line in iptables_save().splitlines() if pod_id[:16] in line]
    found += [f"ip6tables: {line}" for line in ip6tables_save().splitlines() if pod_id[:16] in line]
    if (daemon.root / "pods" / pod_id).exists():
        found.append(f"dir: {daemon.root / 'pods' / pod_id}")
    return found


class Listener:
    """A TCP or UDP server inside a pod's netns that answers ``pong`` once per connection/datagram
    (IPv4, or IPv6 only with ``family=6``)."""

    SCRIPT = r"""
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
v6 = sys.argv[3] == "6"
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind(("::" if v6 else "0.0.0.0", int(sys.argv[2])))
if kind == socket.SOCK_STREAM:
    s.listen(8)
print("ready", flush=True)
while True:
    if kind == socket.SOCK_STREAM:
        c, peer = s.accept()
        c.sendall(b"pong " + peer[0].encode())
        c.close()
    else:
        data, peer = s.recvfrom(100)
        s.sendto(b"pong " + peer[0].encode(), peer)
"""

    def __init__(self, pin: str, port: int, protocol: str = "tcp", family: int = 4) -> None:
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net={pin}",
                "--",
                sys.executable,
                "-c",
                self.SCRIPT,
                protocol,
                str(port),
                str(family),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", self.proc.stderr.read() if self.proc.stderr else line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@dataclass
class Outside:
    """A network namespace standing for the world beyond the host, behind a veth of its own."""

    pin: str
    host4: str  # the host's end of the link
    far4: str  # the outside's end
    host6: str
    far6: str


@contextlib.contextmanager
def outside_network(pin: Path, n: int) -> Iterator[Outside]:
    """Make the outside for network number ``n``: 10.246.n.0/24 and fd42:246:n::/64 between the host
    (.1, ::1) and the netns pinned at ``pin`` (.2, ::2); IPv6 addresses without DAD, usable at once."""
    outside = Outside(str(pin), f"10.246.{n}.1", f"10.246.{n}.2", f"fd42:246:{n}::1", f"fd42:246:{n}::2")
    host_end, far_end = f"cxo{n}", f"cxq{n}"
    pin.touch()
    sh("unshare", f"--net={pin}", "true")
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", far_end)
        sh("ip", "link", "set", far_end, "netns", str(pin))
        sh("ip", "addr", "add", f"{outside.host4}/24", "dev", host_end)
        sh("ip", "-6", "addr", "add", f"{outside.host6}/64", "dev", host_end, "nodad")
        sh("ip", "link", "set", host_end, "up")
        in_netns(str(pin), "ip", "addr", "add", f"{outside.far4}/24", "dev", far_end)
        in_netns(str(pin), "ip", "-6", "addr", "add", f"{outside.far6}/64", "dev", far_end, "nodad")
        in_netns(str(pin), "ip", "link", "set", far_end, "up")
        yield outside
    finally:
        sh("ip", "link", "del", host_end, check=False)
        sh("umount", str(pin), check=False)


def answer_from(
    pin: str, listener_pin: str, address: str, port: int, family: int = 4, listen_port: int = 0
) -> str:
    """Start a TCP Listener in the netns ``listener_pin`` (on ``listen_port``, else ``port``), connect to
    ``address``:``port`` from the netns ``pin``, and return its answer (``pong <the source it saw>``)."""
    listener = Listener(listener_pin, listen_port or port, family=family)
    probe = (
        f"import socket; s = socket.create_connection(({address!r}, {port}), 10); print(s.recv(100).decode())"
    )
    try:
        return in_netns(pin, sys.executable, "-c", probe).stdout.strip()
    finally:
        listener.close()


def host_address() -> str:
    """The host's own primary IPv4 address (traffic to it never leaves the host)."""
    for line in sh("ip", "-4", "-o", "addr", "show", "scope", "global").stdout.splitlines():
        parts = line.split()
        address = parts[3].split("/")[0]
        if parts[1].startswith(("eth", "en")) and not address.startswith(("10.249.", "10.250.")):
            return address
    raise RuntimeError("the host has no global IPv4 address on an ethernet interface")


def exchange(address: str, port: int, protocol: str = "tcp") -> str:
    """Send to a hostPort and return the answer of the pod's Listener."""
    import socket

    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind) as sock:
        sock.settimeout(60)
        sock.connect((address, port))
        if protocol == "tcp":
            return sock.recv(100).decode()
        sock.send(b"ping")
        return sock.recv(100).decode()


def free_port(protocol: str = "tcp") -> int:
    import socket

    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


RECORD_PLUGIN = """#!/usr/bin/python3
# A CNI plugin for tests: records its environment and config, passes the previous result on.
import json, os, sys
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND", "")
if command == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}))
    sys.exit(0)
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.path.join(os.path.dirname(sys.argv[0]), "record-" + command + ".json"), "w") as out:
    json.dump({"env": env, "conf": conf}, out)
if command == "ADD":
    print(json.dumps(conf.get("prevResult") or {"cniVersion": conf["cniVersion"]}))
"""
