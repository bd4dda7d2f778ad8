"""deploy/calyx.service in a real systemd (tests/systemd_fixture.py): Calyx started and stopped through it.

The unit file is installed as shipped; a drop-in (what an operator would write too) points ExecStart at
this checkout's daemon and config, and adjusts the settings this test machine cannot grant (see
``DROPIN``). Checked: ``systemctl start`` returns only once Calyx sent READY=1, so the CRI answers
ready at once; ``systemctl stop`` stops only the daemon (KillMode=process), containers keep running
and the next start adopts them.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2 as pb
from tests.daemon import Daemon
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import host_network_linux, pod_config, run_pod, stop_remove
from tests.reaper import reap
from tests.systemd_fixture import REPO, NamespacedSystemd, pull_from_the_host
from tests.waiting import wait_for

UNIT = REPO / "deploy" / "calyx.service"
UNIT_DIR = "/run/calyx-sd/units"  # in the unit path of the test systemd (its private /run)

# Why each line differs from production:
# - ExecStart: this checkout's venv and the test's config instead of /usr/local/bin/calyx and /etc/calyx.
# - OOMScoreAdjust, LimitNOFILE, LimitNPROC: this machine's capability set has no CAP_SYS_RESOURCE, so
#   systemd can neither lower oom_score_adj below its current value nor raise a hard rlimit; the unit
#   would fail to start (exit status OOM_ADJUST / LIMITS). The test keeps the values it already has.
DROPIN = """[Service]
ExecStart=
ExecStart={python} -m cri.cli serve --config {config} --config-dir {config_dir}
WorkingDirectory={repo}
Environment=PYTHONPATH={repo}
OOMScoreAdjust={oom}
LimitNOFILE={nofile}
LimitNPROC={nproc}
"""


class Unit:
    def __init__(self, systemd: NamespacedSystemd, daemon: Daemon) -> None:
        self.systemd = systemd
        self.daemon = daemon

    def install(self) -> None:
        import resource

        oom = self.systemd.run(["cat", "/proc/1/oom_score_adj"]).stdout.strip()
        dropin = DROPIN.format(
            python=sys.executable,
            config=self.daemon.config_file,
            config_dir=self.daemon.base / "calyx.d",
            repo=REPO,
            oom=oom,
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            nproc=resource.getrlimit(resource.RLIMIT_NPROC)[1],
        )
        script = (
            f'install -m 0644 "$1" {UNIT_DIR}/calyx.service && mkdir -p {UNIT_DIR}/calyx.service.d && '
            f'printf "%s" "$2" > {UNIT_DIR}/calyx.service.d/50-test.conf && systemctl daemon-reload'
        )
        self.systemctl_sh(script, str(UNIT), dropin)

    def systemctl_sh(self, script: str, *args: str) -> None:
        self.systemd.run(["sh", "-c", script, "sh", *args])

    def systemctl(self, *args: str, check: bool = True) -> str:
        return str(self.systemd.run(["systemctl", *args], check=check, timeout=120).stdout.strip())

    def property(self, name: str) -> str:
        return self.systemctl("show", "-p", name, "--value", "calyx.service")

    def uninstall(self) -> None:
        self.systemctl("stop", "calyx.service", check=False)
        self.systemctl_sh(
            f"rm -rf {UNIT_DIR}/calyx.service {UNIT_DIR}/calyx.service.d && systemctl daemon-reload"
        )


@pytest.fixture
def unit(
    namespaced_systemd: NamespacedSystemd, image_registry: LoopbackRegistry, short_tmp: Path
) -> Iterator[Unit]:
    config: dict[str, Any] = {"images": {"registries": {image_registry.host: {"insecure": True}}}}
    pull_from_the_host(short_tmp, config, image_registry.ref("calyx-test/busybox:latest"))
    daemon = Daemon(short_tmp, {**config, "cgroup": {"driver": "systemd"}})  # config and stubs only
    installed = Unit(namespaced_systemd, daemon)
    installed.install()
    try:
        yield installed
    finally:
        daemon.close_channel()
        installed.uninstall()
        # A test that failed after stopping the unit leaves its containers running (KillMode=process).
        leaks = reap(daemon.base)
    assert leaks == [], "the test left these on the host (removed now):\n" + "\n".join(leaks)


def _started(unit: Unit, pid: int) -> int:
    """Start time of ``pid`` in the test systemd's PID namespace (PIDs there are not ours)."""
    stat = unit.systemd.run(["cat", f"/proc/{pid}/stat"]).stdout
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def _ready(daemon: Daemon) -> bool:
    status = daemon.runtime.Status(pb.StatusRequest(), timeout=10).status
    return any(c.type == "RuntimeReady" and c.status for c in status.conditions)


def test_calyx_runs_under_its_unit_and_containers_survive_a_stop(
    unit: Unit, image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    daemon = unit.daemon
    unit.systemctl("start", "calyx.service")  # Type=notify: returns once READY=1 arrived
    assert unit.systemctl("is-active", "calyx.service") == "active"
    assert unit.property("Type") == "notify" and unit.property("KillMode") == "process"
    assert unit.property("Delegate") == "yes"
    assert _ready(daemon)  # no waiting: READY=1 is sent only after recovery
    main_pid = unit.property("MainPID")
    assert main_pid != "0"

    # systemctl reload (ExecReload: SIGHUP) takes up a new pinned image without a restart
    busybox = pb.ImageSpec(image=image_registry.ref("calyx-test/busybox:latest"))
    assert daemon.images.ImageStatus(pb.ImageStatusRequest(image=busybox)).image.pinned is False
    (daemon.base / "calyx.d").mkdir(exist_ok=True)
    (daemon.base / "calyx.d" / "60-pinned.toml").write_text(f'[images]\npinned = ["{busybox.image}"]\n')
    unit.systemctl("reload", "calyx.service")
    wait_for(
        lambda: daemon.images.ImageStatus(pb.ImageStatusRequest(image=busybox)).image.pinned,
        "the reloaded config pins busybox",
    )
    assert unit.property("MainPID") == main_pid
    assert unit.systemctl("is-active", "calyx.service") == "active"

    uid = secrets.token_hex(6)
    linux = host_network_linux()
    linux.cgroup_parent = f"kubepods-besteffort-pod{uid}.slice"
    logs = short_tmp / "podlogs"
    logs.mkdir()
    pod = pod_config(log_directory=str(logs), linux=linux)
    pod_id = run_pod(daemon, pod)
    try:
        cid = daemon.runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                sandbox_config=pod,
                config=pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name="survivor"),
                    image=pb.ImageSpec(image=image_registry.ref("calyx-test/busybox:latest")),
                    command=["sleep", "1000"],
                    log_path="survivor.log",
                ),
            ),
            timeout=120,
        ).container_id
        daemon.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        info = json.loads(
            daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True)).info[
                "info"
            ]
        )
        # PIDs of the test systemd's namespace: compare through its /proc
        pid, conmon = int(info["pid"]), int(info["monitorPid"])
        started = _started(unit, pid)

        daemon.close_channel()
        unit.systemctl("stop", "calyx.service")
        assert unit.systemctl("is-active", "calyx.service", check=False) == "inactive"
        assert _started(unit, pid) == started  # the same process, still running
        assert unit.systemd.run(["kill", "-0", str(conmon)], check=False).returncode == 0

        unit.systemctl("start", "calyx.service")
        assert unit.property("MainPID") not in ("0", main_pid)
        st = daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
        assert st.state == pb.CONTAINER_RUNNING
        assert _started(unit, pid) == started

        # Restart=always: a daemon killed outright is started again by systemd, and adopts the container.
        killed = unit.property("MainPID")
        unit.systemd.run(["kill", "-9", killed])
        deadline = time.monotonic() + 60  # bounds the wait for systemd's restart, not a measurement
        while (
            unit.property("MainPID") in ("0", killed)
            or unit.systemctl("is-active", "calyx.service", check=False) != "active"
        ):
            assert time.monotonic() < deadline, "systemd did not restart calyx"
            time.sleep(0.2)
        daemon.close_channel()
        assert _ready(daemon)
        assert int(unit.property("NRestarts")) >= 1
        st = daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
        assert st.state == pb.CONTAINER_RUNNING and _started(unit, pid) == started
    finally:
        stop_remove(daemon, pod_id)
