"""A real systemd for tests of the systemd cgroup driver, on hosts where systemd is not PID 1.

Debian's systemd boots as PID 1 of private PID, mount, UTS, IPC, network and cgroup namespaces, with a
unit set that holds journald and dbus only, in cgroups of its own below this process's. Tests then run
commands inside with ``run``/``popen``/``python``: there the system bus is that systemd's, and PIDs
handed to StartTransientUnit are valid for it. The cgroup files it manages can be read from outside
through ``host_dir``.

What keeps the host safe (each point was learned the hard way, see ../shared/notes/README.md):
- the inner systemd sees no Debian unit but the whitelisted ones (Debian's tmpfiles and sysctl units
  would run against the host: wipe /tmp, change sysctls);
- it has its own network namespace (it would otherwise tune the host's net.unix.max_dgram_qlen);
- it is stopped with SIGKILL of its PID 1, which kills the whole PID namespace (a graceful poweroff can
  hang on containers that ignore SIGTERM), and always stopped, also when a test fails;
- callers change unit properties with runtime=true only, so nothing is written to the host's /etc.

On a host where systemd is PID 1 over pure cgroup v2 (a node, as tests/node/run.sh boots one) no
such systemd can boot (it needs the v1 named hierarchy), and none is needed: ``HostSystemd`` hands the
tests the host's own, where each test's units are its own (named after it) and removed by it.

Use it with ``namespaced_systemd`` (session-scoped: one boot for all tests; import the fixture into a
test module or a conftest.py)::

    from tests.systemd_fixture import NamespacedSystemd, namespaced_systemd  # noqa: F401
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2 as pb
from tests.daemon import CALYX, Daemon

REPO = Path(__file__).resolve().parent.parent
PID1_SCRIPT = Path(__file__).resolve().parent / "systemd_pid1.sh"
DEBIAN_UNITS = Path("/lib/systemd/system")
# The only Debian units the inner systemd may see: the journal, the bus, and what shutdown needs.
WHITELIST = (
    "dbus.socket",
    "dbus.service",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket",
    "shutdown.target",
    "umount.target",
    "final.target",
    "exit.target",
    "systemd-exit.service",
)
# Targets that default dependencies point at; empty stand-ins so that nothing else gets pulled in.
EMPTY_TARGETS = ("sysinit", "basic", "sockets", "timers", "paths", "slices", "local-fs")
BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
PR_SET_PDEATHSIG = 1
_counter = itertools.count()


class NamespacedSystemd:
    """One booted systemd in private namespaces; ``start()``, then ``run``/``popen``, then ``stop()``."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"calyx-sd-{os.getpid()}-{next(_counter)}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp"))
        self.pid1 = 0
        self._unshare: subprocess.Popen[bytes] | None = None
        self._cgdirs: list[Path] = []
        self._outer: dict[str, Path] = {}  # inner mount name -> our cgroup dir for it, on the host

    # --- boot -------------------------------------------------------------------------------------------

    def _plan_cgroups(self) -> tuple[list[str], dict[str, Path]]:
        """Our cgroup in every hierarchy we are in, plus a child named after this instance."""
        controllers: list[str] = []
        outer: dict[str, Path] = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, names, path = line.split(":", 2)
            if names == "":
                mount, key = Path("/sys/fs/cgroup/unified"), "unified"
            elif names == "name=systemd":
                mount, key = Path("/sys/fs/cgroup/systemd"), "systemd"
            else:
                mount, key = Path("/sys/fs/cgroup") / names, names
                controllers.append(names)
            if mount.is_dir():
                outer[key] = mount / path.strip("/") / self.name
        return controllers, outer

    def _write_units(self) -> Path:
        units = self.workdir / "units"
        units.mkdir()
        for name in WHITELIST:
            shutil.copy2(DEBIAN_UNITS / name, units / name)
        # The socket unit would put a /dev/log symlink into the host's devtmpfs.
        devlog = units / "systemd-journald-dev-log.socket"
        devlog.write_text(
            "".join(line for line in devlog.read_text().splitlines(True) if not line.startswith("Symlinks="))
        )
        for target in EMPTY_TARGETS:
            (units / f"{target}.target").write_text(
                f"[Unit]\nDescription={target} (empty in the calyx test systemd)\nDefaultDependencies=no\n"
            )
        (units / "calyx-test.target").write_text(
            "[Unit]\nDescription=calyx test systemd\nDefaultDependencies=no\nAllowIsolate=yes\n"
            "Wants=systemd-journald.socket systemd-journald.service dbus.socket dbus.service\n"
            "After=systemd-journald.service dbus.socket dbus.service\n"
        )
        return units

    def start(self, timeout: float = 30.0) -> NamespacedSystemd:
        """Boot. Call it from a thread that lives as long as the systemd should: the systemd is
        killed when that thread ends (so that a killed test run leaves nothing running)."""
        controllers, self._outer = self._plan_cgroups()
        _remove_stale(list(self._outer.values()))
        for directory in self._outer.values():
            _remove_tree(directory)  # a crashed run of the same name
            directory.mkdir(parents=True)
            self._cgdirs.append(directory)
            if (directory / "cpuset.cpus").exists():
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (directory / name).write_text((directory.parent / name).read_text().strip())
        env = dict(
            os.environ,
            CALYX_SD_CGDIRS="\n".join(str(d) for d in self._cgdirs),
            CALYX_SD_CONTROLLERS=" ".join(controllers),
            CALYX_SD_UNITS=str(self._write_units()),
        )
        log = open(self.workdir / "boot.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self._unshare = subprocess.Popen(
                ["unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--fork", "--kill-child",
                 str(PID1_SCRIPT), "enter"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        finally:
            log.close()
        try:
            self.pid1 = self._wait_pid1(timeout)
            self._wait_running(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_pid1(self, timeout: float) -> int:
        assert self._unshare is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise RuntimeError(f"systemd namespaces exited early:\n{self.boot_log()}")
            child = _first_child(self._unshare.pid)
            if child is not None:
                return child
            time.sleep(0.02)
        raise TimeoutError("PID 1 of the systemd namespaces did not appear")

    def _wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self._unshare is not None and self._unshare.poll() is not None:
                raise RuntimeError(f"systemd exited during boot:\n{self.boot_log()}")
            probe = subprocess.run(
                ["nsenter", "-t", str(self.pid1), "-a", "systemctl", "is-system-running"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            state = probe.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"systemd not running after {timeout}s (state {state!r}):\n{self.boot_log()}")

    def boot_log(self) -> str:
        path = self.workdir / "boot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- inside -----------------------------------------------------------------------------------------

    def argv(self, command: Sequence[str], cwd: str | Path = REPO) -> list[str]:
        """argv that runs ``command`` inside every namespace AND the root cgroups of the inner systemd
        (nsenter alone would leave it in the host's cgroups, where systemd cannot move it)."""
        join = 'for f in /sys/fs/cgroup/*/cgroup.procs; do echo $$ > "$f"; done; cd "$0" && exec "$@"'
        return ["nsenter", "-t", str(self.pid1), "-a", "--", "/bin/sh", "-c", join, str(cwd), *command]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=BUS_ADDRESS, PYTHONPATH=str(REPO))
        env.update(extra or {})
        return env

    def run(
        self, command: Sequence[str], timeout: float = 60.0, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside and wait; raises with its output when ``check`` and it fails."""
        done = subprocess.run(
            self.argv(command, kw.pop("cwd", REPO)),
            capture_output=True, text=True, timeout=timeout, env=self.env(kw.pop("env", None)), **kw,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode} inside the test systemd:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def popen(self, command: Sequence[str], **kw: Any) -> InnerProcess:
        """Start ``command`` inside (e.g. a calyx daemon); it dies with the namespaces at stop().

        The result is a Popen of the nsenter whose signals (terminate, kill, send_signal) go to the
        command itself; ``wait`` returns when the command has exited.
        """
        return InnerProcess(self.argv(command, kw.pop("cwd", REPO)), env=self.env(kw.pop("env", None)), **kw)

    def python(
        self, code: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet inside with this checkout importable (the project's venv python)."""
        return self.run([sys.executable, "-c", code], timeout=timeout, check=check)

    def host_dir(self, hierarchy: str, cgroup_path: str) -> Path:
        """Where the inner cgroup ``cgroup_path`` of ``hierarchy`` (e.g. "memory") is on the host."""
        return self._outer[hierarchy] / cgroup_path.strip("/")

    # --- stop -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGKILL PID 1 (the kernel kills every process of its PID namespace), remove our cgroups."""
        if self.pid1 and _alive(self.pid1):
            os.kill(self.pid1, signal.SIGKILL)
        if self._unshare is not None:
            try:
                self._unshare.wait(30)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(10)
        self.pid1 = 0
        for directory in self._cgdirs:
            _remove_tree(directory, retry_seconds=10.0)
        leftovers = [str(d) for d in self._cgdirs if d.exists()]
        self._cgdirs = []
        shutil.rmtree(self.workdir, ignore_errors=True)
        if leftovers:
            raise RuntimeError(f"cgroups of the test systemd could not be removed: {leftovers}")


class HostSystemd(NamespacedSystemd):
    """The host's own systemd, where it is PID 1 over cgroup v2: commands run as they are, on the host's
    system bus, and a cgroup's dir is /sys/fs/cgroup/<path> whatever the controller."""

    def __init__(self) -> None:
        super().__init__(f"calyx-host-sd-{os.getpid()}-{next(_counter)}")
        self.pid1 = 1

    @staticmethod
    def usable() -> bool:
        """systemd is PID 1 and /sys/fs/cgroup is one cgroup2 tree."""
        try:
            comm = Path("/proc/1/comm").read_text().strip()
        except OSError:
            return False
        return comm == "systemd" and Path("/sys/fs/cgroup/cgroup.controllers").exists()

    def start(self, timeout: float = 30.0) -> HostSystemd:
        return self

    def argv(self, command: Sequence[str], cwd: str | Path = REPO) -> list[str]:
        return ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *command]

    def popen(self, command: Sequence[str], **kw: Any) -> InnerProcess:
        return HostProcess(self.argv(command, kw.pop("cwd", REPO)), env=self.env(kw.pop("env", None)), **kw)

    def host_dir(self, hierarchy: str, cgroup_path: str) -> Path:
        return Path("/sys/fs/cgroup") / cgroup_path.strip("/")

    def stop(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class InnerProcess(subprocess.Popen):  # type: ignore[type-arg]
    """nsenter forks the command into the PID namespace and only waits for it: it forwards no signal.
    This Popen sends signals to the command (nsenter's child, by its host PID) instead."""

    def inner_pid(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = _first_child(self.pid)
            if child is not None:
                return child
            if self.poll() is not None:
                return 0
            time.sleep(0.01)
        raise TimeoutError(f"nsenter {self.pid} started no command")

    def send_signal(self, sig: int) -> None:
        pid = self.inner_pid() if self.poll() is None else 0
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


class HostProcess(InnerProcess):
    """A command started by HostSystemd: the process itself (its shell exec'd it)."""

    def inner_pid(self, timeout: float = 10.0) -> int:
        return self.pid if self.poll() is None else 0


class SystemdDaemon(Daemon):
    """A calyx daemon running inside the test systemd (e.g. with cgroup.driver = systemd)."""

    def __init__(self, systemd: NamespacedSystemd, base: Path, config: dict[str, Any] | None = None) -> None:
        super().__init__(base, config)
        self.systemd = systemd

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> SystemdDaemon:
        with open(self.log_file, "ab") as log:
            self.proc = self.systemd.popen(
                [
                    *CALYX,
                    "serve",
                    "--config",
                    str(self.config_file),
                    "--config-dir",
                    str(self.base / "calyx.d"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self


def pull_from_the_host(base: Path, config: dict[str, Any], ref: str) -> None:
    """Pull ``ref`` with a daemon on the host into the state dirs under ``base``: the test systemd's
    network namespace has no route to the loopback registry, so a daemon inside uses what this pulled."""
    puller = Daemon(base, config).start()
    try:
        puller.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
    finally:
        puller.stop()


def _first_child(pid: int) -> int | None:
    """The first child of a process (forked by its main thread); None while it has none."""
    try:
        pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(pids[0]) if pids else None


def _die_with_parent() -> None:
    """In the unshare child: SIGKILL when the test process dies, however it dies (unshare's
    --kill-child then takes systemd and its whole PID namespace along)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _remove_stale(ours: list[Path]) -> None:
    """Empty cgroup trees and work dirs of test systemds whose test process died (both named
    calyx-sd-<pid>-<n>...)."""
    for directory in ours:
        for sibling in directory.parent.glob("calyx-sd-*-*"):
            if _dead_owner(sibling.name):
                _remove_tree(sibling)
    for workdir in Path("/tmp").glob("calyx-sd-*-*-*"):
        if _dead_owner(workdir.name):
            shutil.rmtree(workdir, ignore_errors=True)


def _dead_owner(name: str) -> bool:
    owner = name.split("-")[2]
    return owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove_tree(directory: Path, retry_seconds: float = 0.0) -> None:
    """rmdir a cgroup tree deepest first; dying tasks may keep a cgroup busy for a moment."""
    deadline = time.monotonic() + retry_seconds
    while directory.exists():
        for root, dirs, _files in os.walk(directory, topdown=False):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(Path(root) / name)
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)


@pytest.fixture(scope="session")
def namespaced_systemd() -> Iterator[NamespacedSystemd]:
    """One real systemd for the session; tests must remove the units they start.

    Session scope is safe because every test names its units after itself and stops them, and the
    systemd is killed (with everything in it) at the end even when tests failed.
    """
    systemd = HostSystemd() if HostSystemd.usable() else NamespacedSystemd()
    systemd.start()
    try:
        yield systemd
    finally:
        systemd.stop()
