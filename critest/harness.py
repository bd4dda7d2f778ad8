"""What critest runs against, and its removal however the run ends.

A loopback registry holding the test images (critest/images.py), a Calyx daemon (the tests' ``Daemon``)
with the registry-mirror drop-in and the built-in network on a bridge and subnet claimed like the
tests' (tests/net_fixtures.py), its pods under a cgroup root of the run's own, critest's temp dirs
inside the run's work dir. Leaving the ``environment`` block, by success, failure, a dead Calyx or
critest, or SIGTERM/SIGINT (turned into KeyboardInterrupt by the runner), removes every pod through
the CRI (a dead Calyx is started again for that), stops Calyx and the registry by PID, reaps what they
left (tests/reaper.py, tests/host_cleanup.py), and deletes the bridge, its iptables chains and restores the
forwarding sysctls. SysV segments of critest's HostIpc specs live in the run's own IPC namespace
(``private_ipc_namespace``) and go with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc

from cri.api import api_pb2 as pb
from critest.images import calyx_images, critest_images, mirror_config, push_all
from tests import host_cleanup as host
from tests.daemon import Daemon
from tests.net_fixtures import _claim_n, _host_restored, _release_n, _remove_all_pods
from tests.reaper import reap
from tests.registry import Registry

log = logging.getLogger("critest.harness")

REPO = Path(__file__).resolve().parent.parent
CLONE_NEWIPC = 0x08000000


def private_ipc_namespace() -> None:
    """Move this process, and so what it starts from now on, into an IPC namespace of its own.

    critest's HostIpc specs make SysV shared-memory segments (``ipcmk``) in critest's IPC namespace and
    look for them from a host-IPC container, i.e. in Calyx's. Both run in this one: the specs see what
    they would on a node, and the segments are freed with the namespace instead of staying on the host.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWIPC) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWIPC): {os.strerror(err)}")


@contextlib.contextmanager
def environment(work: Path, leftovers: list[str]) -> Iterator[Daemon]:
    """A ready Calyx serving the test images; yields its ``Daemon``. What its removal found still on
    the host after the CRI cleanup (a leak of Calyx's) is appended to ``leftovers``."""
    with contextlib.ExitStack() as stack:
        n = _claim_n()
        stack.callback(_release_n, n)
        bridge, subnet = f"cxp{n}", f"10.250.{n}.0/24"
        cgroup_root = f"calyx-critest-{n}"
        stack.enter_context(_host_restored(bridge))  # bridge, its chains, forwarding sysctls
        stack.callback(lambda: leftovers.extend(f"cgroup {c}" for c in host.remove_cgroups(cgroup_root)))

        storage = work / "registry"
        storage.mkdir()
        registry = Registry(work, storage)
        stack.callback(registry.stop)
        registry.start()
        print(f"pushing the test images to {registry.host} ...", flush=True)
        push_all(registry.host, calyx_images() + critest_images())

        (work / "no-cni").mkdir()  # an empty CNI dir: the built-in network on the claimed bridge
        config = {
            "server": {"log_level": "info"},
            "network": {"bridge": bridge, "subnet": subnet, "cni_conf_dir": str(work / "no-cni")},
            "cgroup": {"driver": "cgroupfs", "default_parent": f"/{cgroup_root}"},
        }
        base = work / "calyx"
        base.mkdir()
        daemon = Daemon(base, config, env={"PYTHONPATH": str(REPO)})
        (base / "calyx.d").mkdir()
        (base / "calyx.d" / "50-mirrors.toml").write_text(mirror_config(registry.host))
        stack.callback(_remove_daemon, daemon, leftovers)
        daemon.start(timeout=60)
        print(
            f"calyx ready on {daemon.socket} (bridge {bridge}, cgroup /{cgroup_root}, log {daemon.log_file})",
            flush=True,
        )
        yield daemon


def exit_status(daemon: Daemon) -> int | None:
    """None while Calyx answers; once it does not, its exit status (a hung one is killed first)."""
    assert daemon.proc is not None
    try:
        daemon.runtime.Version(pb.VersionRequest(), timeout=10)
        return None
    except grpc.RpcError:
        try:
            return daemon.proc.wait(10)  # a process just killed takes a moment to be reaped
        except subprocess.TimeoutExpired:
            daemon.kill9()
            return daemon.proc.returncode


def _remove_daemon(daemon: Daemon, leftovers: list[str]) -> None:
    """Every pod removed through the CRI (a dead daemon is started again, and recovers first), the
    daemon stopped; then whatever of its is still on the host is removed and reported."""
    if daemon.proc is not None:
        exit_status(daemon)
    _remove_all_pods(daemon)
    daemon.stop()
    leftovers.extend(reap(daemon.base))


def remove_work_dir(work: Path) -> str:
    """Delete the run's work dir once nothing is mounted under it (critest's mount-propagation specs
    bind host dirs below its temp dirs: deleting through a mount would delete the host's files).
    Returns why it was kept, or "" once deleted."""
    host.unmount_under(work)
    mounted = host.mounts_under(work)
    if mounted:
        return f"{work} kept: still mounted under it: {', '.join(mounted)}"
    shutil.rmtree(work, ignore_errors=True)
    return ""
