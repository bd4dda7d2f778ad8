"""The reference runtime: Debian's containerd with its CRI plugin, started with a config of our own.

Everything it owns lives under one temp dir (root, state, sockets, runc root, netns pins, CNI config
and IPAM state) plus a cgroup root, a bridge name and a metrics port unique to the run. It pulls the
same images from the same loopback registry; the pause image it needs is served by that registry
under its upstream name through a registry mirror (hosts.toml), so nothing leaves the machine.
Stopped by PID; whatever it leaves (shims, mounts, cgroups, the bridge) is removed after.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cni import CNI_BIN_DIR, write_conflist
from tests import host_cleanup as host
from tests.registry import free_port

log = logging.getLogger("bench.containerd")

CONTAINERD = "/usr/bin/containerd"
SHIM = "/usr/bin/containerd-shim-runc-v2"


def installed() -> bool:
    return Path(CONTAINERD).exists() and Path(SHIM).exists()


def ensure_installed() -> str | None:
    """Install Debian's containerd if missing; None when it is there, else why not."""
    if installed():
        return None
    log.info("installing containerd (apt-get install containerd)")
    out = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "containerd"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0 or not installed():
        return f"reference not installed: apt-get install containerd failed: {out.stderr.strip()[-300:]}"
    return None


def version() -> str:
    try:
        out = subprocess.run([CONTAINERD, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.split()[2] if out.returncode == 0 else "?"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def hosts_toml(registry: str) -> str:
    """A mirror that is the only host tried: ``server`` is the loopback registry too."""
    return (
        f'server = "http://{registry}"\n\n'
        f'[host."http://{registry}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  skip_verify = true\n"
    )


@dataclass
class Containerd:
    base: Path
    registry: str  # host:port of the loopback registry
    pause_image: str
    bridge: str
    subnet: str
    cgroup_root: str

    def __post_init__(self) -> None:
        self.network = f"cxbench-{self.bridge}"  # this run's own: see bench/calyx.py
        self.socket = self.base / "containerd.sock"
        self.metrics_port = free_port()
        self.log_file = self.base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/v1/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def config(self) -> str:
        b = self.base
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{b}/root"
state = "{b}/state"
oom_score = 0

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = "127.0.0.1:{self.metrics_port}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"

[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1

[{cri}]
  sandbox_image = "{self.pause_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  Root = "{b}/runc"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{b}/cni"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{b}/certs.d"
"""

    def start(self, timeout: float = 60.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        write_conflist(self.base / "cni", self.network, self.bridge, self.subnet, self.base / "ipam")
        for host_name in (self.registry, self.pause_image.split("/", 1)[0]):
            d = self.base / "certs.d" / host_name
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts.toml").write_text(hosts_toml(self.registry))
        config = self.base / "config.toml"
        config.write_text(self.config())
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.socket.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.05)
        if not self.socket.exists():
            raise RuntimeError(f"containerd made no socket in {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-n:] if self.log_file.exists() else ""

    def stop(self) -> list[str]:
        """Stop containerd by PID, then its shims and leftovers; returns what could not be removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Shims outlive containerd by design; ours are the ones given our socket's address.
        shims = host.processes_mentioning(f"-address {self.socket}")
        host.kill_pids(shims)
        host.unmount_under(self.base)
        left = host.remove_cgroups(self.cgroup_root.strip("/"))
        host.delete_link(self.bridge)
        host.remove_iptables_rules(self.network)
        return left
