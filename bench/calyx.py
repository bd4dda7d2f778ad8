"""Calyx as the runtime under test: started by the benchmark on private dirs, or an endpoint given.

The daemon is the test suite's ``Daemon`` (tests/daemon.py), given a config of the run's own: on the
CNI network, its conflist (a bridge name and subnet unique to the run); on the built-in network (what a
new user gets: no CNI config), that bridge name and subnet and an empty CNI conf dir; the loopback
registry as insecure, the Prometheus exporter on a free port, and info-level logs (debug logs would be
measured too). The built-in network's bridge and chains outlive the pods: stopping runs ``calyx
cleanup``.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

from bench.cni import CNI_BIN_DIR, write_conflist
from cri import __version__
from cri.config import Config
from tests import host_cleanup as host
from tests.daemon import Daemon, calyx_command
from tests.registry import free_port

DURATION = re.compile(r"\bduration_ms=([0-9.]+)")


def known_options(table: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``table`` less the options this build of Calyx does not have (it refuses unknown keys);
    returns what is kept and the dropped keys, so a run on an older tree still starts."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    hints = typing.get_type_hints(Config)
    for section, values in table.items():
        if section not in hints:
            dropped.append(section)
            continue
        fields = {f.name for f in dataclasses.fields(hints[section])}
        kept[section] = {k: v for k, v in values.items() if k in fields}
        dropped += [f"{section}.{k}" for k in values if k not in fields]
    return kept, dropped


NETWORKS = ("cni", "builtin")


class Calyx:
    def __init__(
        self, base: Path, registry: str, bridge: str, subnet: str, cgroup_root: str, network: str = "cni"
    ) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.bridge = bridge
        self.builtin = network == "builtin"
        # The run's own CNI network name: the bridge plugin's masquerade rules carry it, so a stop
        # removes this run's rules only, not those of another run going on.
        self.network = f"cxbench-{bridge}"
        self.cgroup_root = cgroup_root
        self.metrics_port = free_port()
        net: dict[str, Any] = {"cni_conf_dir": str(base / "cni"), "bridge": bridge}
        if self.builtin:
            (base / "cni").mkdir(exist_ok=True)  # empty: the built-in network
            net["subnet"] = subnet
        else:
            write_conflist(base / "cni", self.network, bridge, subnet, base / "ipam")
            net["cni_bin_dirs"] = [CNI_BIN_DIR]
        wanted = {
            "server": {"log_level": "info"},
            "metrics": {"enabled": True, "address": "127.0.0.1", "port": self.metrics_port},
            "network": net,
            "images": {"registries": {registry: {"insecure": True}}},
            "cgroup": {"driver": "cgroupfs"},
        }
        config, self.dropped = known_options(wanted)
        self.daemon = Daemon(base, config)
        self._log_offset = 0

    @property
    def endpoint(self) -> str:
        return f"unix://{self.daemon.socket}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.daemon.proc.pid if self.daemon.proc is not None else None

    def start(self) -> None:
        self.daemon.start(timeout=60)

    def pull_phases(self) -> dict[str, float] | None:
        """Unpack and download time of the pulls logged since the last call, None if not logged.

        Calyx logs "layer unpacked" with each layer's duration_ms and "image pulled" with the whole
        pull's; what is not unpacking is counted as download (fetch, verify, records).
        """
        text = self.daemon.log()
        new, self._log_offset = text[self._log_offset :], len(text)
        unpack = total = 0.0
        seen = False
        for line in new.splitlines():
            match = DURATION.search(line)
            if match is None:
                continue
            if 'msg="layer unpacked"' in line:
                unpack += float(match[1])
            elif 'msg="image pulled"' in line:
                total += float(match[1])
                seen = True
        if not seen:
            return None
        return {"download": total - unpack, "unpack": unpack, "total": total}

    def stop(self) -> list[str]:
        self.daemon.stop()
        # Containers and their monitors outlive the daemon by design. After a clean run there are
        # none; after a failed one, the run's own are in its cgroup root or name its dirs.
        left = host.remove_cgroups(self.cgroup_root.strip("/"))
        host.kill_pids(host.processes_mentioning(str(self.base)), grace=2.0)
        host.unmount_under(self.base)
        if self.builtin:
            config = ["--config", str(self.daemon.config_file), "--config-dir", str(self.base / "calyx.d")]
            calyx_command("cleanup", "--force", *config, timeout=60)
        host.delete_link(self.bridge)
        host.remove_iptables_rules(self.network)
        return left


def version() -> str:
    return __version__


def conmon_version() -> str:
    try:
        out = subprocess.run(["conmon", "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.split()[2] if out.returncode == 0 else "?"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def git_version() -> str:
    """The commit the run measured (the package version alone does not change between commits)."""
    out = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent.parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip() if out.returncode == 0 else "?"
