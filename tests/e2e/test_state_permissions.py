"""Calyx's state is root's alone: an unprivileged host user, with a pod and its container running, can
list, read, traverse into or write nothing of it (tests/perm_probe.py, run as ``nobody``).

Checked: the state root, the run root, every container dir (config.json holds an env value from a
Secret; the rootfs holds the image's setuid binaries), the store, the layer store and blobs, the pods'
files, pins and /dev/shm, runc's state and the log dirs Calyx makes. A user-namespaced pod's root (an
unprivileged host uid) reaches its own rootfs, as runc needs, and nothing else. A tree left open by an
older Calyx is tightened at start, running containers untouched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.e2e.test_userns import _container_config, _host_base, _userns_linux
from tests.image_fixtures import image_registry, registry_base  # noqa: F401

cx = container_fixtures.cx

PROBE = Path(__file__).resolve().parent.parent / "perm_probe.py"
SECRET = b"s3cr3t-from-a-kubernetes-secret"
NOBODY = ["runuser", "-u", "nobody", "--"]


def _probe(as_user: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """tests/perm_probe.py run as another host user, its source on the command line (that user need
    not be able to read this checkout)."""
    result = subprocess.run(
        [*as_user, "/usr/bin/python3", "-c", PROBE.read_text(), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _open_test_dirs(cx: Cx) -> Path:
    """Let other users pass the test's own dirs (mkdtemp makes them 0700), so that only the modes of
    what Calyx makes keep them out; a log dir Calyx has to make itself."""
    base = cx.daemon.base.parent
    base.chmod(0o755)
    cx.daemon.base.chmod(0o755)
    logs = base / "logs"
    cx.logs = logs / "calyx-test_pod_uid"  # does not exist: RunPodSandbox makes it
    return logs


def _running_container(cx: Cx, pod: tuple[str, pb.PodSandboxConfig], config: pb.ContainerConfig) -> str:
    config.envs.append(pb.KeyValue(key="API_TOKEN", value=SECRET))
    config.log_path = f"{config.metadata.name}/0.log"  # its dir is made by Calyx
    return cx.start(cx.create(pod, config))


def _container_paths(cx: Cx, cid: str) -> list[Path]:
    c = cx.daemon.root / "containers" / cid
    return [
        c,
        c / "config.json",
        c / "state.json",
        c / "rootfs",
        c / "rootfs" / "bin" / "busybox",
        c / "upper",
        cx.daemon.run_root / "runc" / cid / "state.json",
    ]


def _pod_paths(cx: Cx, pod_id: str) -> list[Path]:
    root, run = cx.daemon.root, cx.daemon.run_root
    return [
        root / "pods" / pod_id,
        root / "pods" / pod_id / "resolv.conf",
        run / "shm" / pod_id,
        run / "ns" / "net" / pod_id,
    ]


def _state_paths(cx: Cx) -> list[Path]:
    root = cx.daemon.root
    layers = root / "images" / "layers"
    blobs = root / "images" / "blobs" / "sha256"
    found = [p for d in (layers, blobs) if d.is_dir() for p in d.iterdir()]
    assert found, "the image's layers and blobs are there to be probed"
    return [root / "calyx.db", root / "calyx.db-wal", layers, *found, cx.daemon.run_root / "exits"]


def _request(cx: Cx, logs: Path, paths: list[Path], writable: list[Path]) -> dict[str, Any]:
    return {
        "walk": [str(cx.daemon.root), str(cx.daemon.run_root), str(logs)],
        "reach": [str(p) for p in paths],
        "write": [str(p) for p in writable],
    }


def _assert_nothing_for_nobody(cx: Cx, report: dict[str, Any]) -> None:
    """What nobody managed, all of it in the message: nothing but stat what lies directly in the dirs
    that are searchable (0711, for a user-namespaced pod's root): the two roots and the containers dir."""
    assert report["uid"] == 65534
    done = {k: report[k] for k in ("listed", "read", "reached_read", "wrote")}
    assert done == {"listed": [], "read": [], "reached_read": [], "wrote": []}, json.dumps(report, indent=1)
    assert _beyond_searchable(cx, report["reached"]) == [], json.dumps(report, indent=1)


def _beyond_searchable(cx: Cx, paths: list[str]) -> list[str]:
    searchable = {str(d) for d in (cx.daemon.root, cx.daemon.run_root, cx.daemon.root / "containers")}
    return [p for p in paths if os.path.dirname(p) not in searchable]


def test_an_unprivileged_user_can_reach_nothing_of_a_running_pod(cx: Cx) -> None:
    logs = _open_test_dirs(cx)
    pod = cx.pod(host_network=False)  # its own network and IPC namespaces: a /dev/shm of its own
    cid = _running_container(cx, pod, cx.config("c1", ["sleep", "1000"]))
    shm = cx.daemon.run_root / "shm" / pod[0]
    assert cx.output(cid, "sh", "-c", "echo $API_TOKEN; echo x > /dev/shm/f; cat /etc/hosts >/dev/null") != ""
    log_file = Path(cx.status(cid).status.log_path)
    assert log_file.is_file() and str(log_file).startswith(str(logs))

    paths = [*_container_paths(cx, cid), *_pod_paths(cx, pod[0]), *_state_paths(cx), log_file]
    writable = [shm, cx.daemon.root, cx.daemon.run_root, cx.daemon.root / "containers", log_file.parent]
    report = _probe(NOBODY, _request(cx, logs, paths, writable))
    _assert_nothing_for_nobody(cx, report)

    # what containers must read still is: a non-root user reads the pod's files and writes its /dev/shm
    config = cx.config("c2", ["sleep", "1000"])
    config.linux.security_context.run_as_user.value = 1000
    other = _running_container(cx, pod, config)
    assert cx.output(other, "sh", "-c", "id -u; cat /etc/resolv.conf /etc/hostname /etc/hosts | wc -l")
    assert cx.output(other, "sh", "-c", "echo y > /dev/shm/g && cat /dev/shm/f /dev/shm/g") == "x\ny\n"


def _user_namespaces() -> bool:
    try:
        return int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        return False


@pytest.mark.skipif(not _user_namespaces(), reason="this kernel allows no user namespaces")
def test_a_user_namespaced_pods_root_reaches_its_rootfs_and_nothing_else(cx: Cx) -> None:
    logs = _open_test_dirs(cx)
    host = _host_base()
    upod = cx.pod(linux=_userns_linux(host), host_network=False)
    ucid = _running_container(cx, upod, _container_config(cx, upod, "u", ["sleep", "1000"]))
    assert cx.output(ucid, "sh", "-c", "echo hi > /dev/shm/f && cat /dev/shm/f /etc/hostname") != ""
    pod = cx.pod(host_network=False)
    cid = _running_container(cx, pod, cx.config("c1", ["sleep", "1000"]))
    udir = cx.daemon.root / "containers" / ucid
    assert (udir.stat().st_mode & 0o777, udir.stat().st_gid) == (0o710, host)

    paths = [
        *_container_paths(cx, ucid),
        *_pod_paths(cx, upod[0]),
        *_container_paths(cx, cid),
        *_pod_paths(cx, pod[0]),
        *_state_paths(cx),
    ]
    shms = [cx.daemon.run_root / "shm" / p for p in (upod[0], pod[0])]
    request = _request(cx, logs, paths, [*shms, cx.daemon.root / "containers"])
    _assert_nothing_for_nobody(cx, _probe(NOBODY, request))

    # the pod's root (host uid and gid ``host``): through its container dir to its rootfs, as runc
    # needs to mount it from inside the user namespace; nothing of the other pod, the store or the pods
    as_root = ["setpriv", f"--reuid={host}", f"--regid={host}", "--clear-groups", "--"]
    report = _probe(as_root, request)
    assert report["uid"] == host
    assert {str(udir / "rootfs"), str(udir / "rootfs" / "bin" / "busybox")} <= set(report["reached"])
    own = (str(udir / "rootfs"), str(udir / "upper"))
    beyond = [p for p in _beyond_searchable(cx, report["reached"]) if not p.startswith(str(udir) + "/")]
    beyond += [p for p in report["reached_read"] + report["read"] if not p.startswith(own)]
    assert beyond == [] and report["listed"] == [] and report["wrote"] == [], json.dumps(report, indent=1)
    assert str(udir / "config.json") not in report["reached_read"]


def _loosen_as_an_older_calyx_left_it(cx: Cx, cid: str, pod_id: str) -> list[Path]:
    """The modes Calyx gave its state before it kept it private (0755 dirs, 0644 files)."""
    root, run = cx.daemon.root, cx.daemon.run_root
    bundle = root / "containers" / cid
    dirs = [root, run, root / "containers", bundle, root / "pods", root / "pods" / pod_id, root / "images"]
    dirs += [root / "images" / "layers", run / "ns", run / "shm", run / "runc", run / "exits"]
    files = [root / "calyx.db", bundle / "config.json", bundle / "state.json"]
    for d in dirs:
        d.chmod(0o755)
    for f in files:
        f.chmod(0o644)
    return [*dirs, *files]


def test_state_left_open_by_an_older_calyx_is_tightened_at_start(cx: Cx) -> None:
    logs = _open_test_dirs(cx)
    pod = cx.pod(host_network=False)
    cid = _running_container(cx, pod, cx.config("c1", ["sleep", "1000"]))
    cx.daemon.stop()  # containers keep running
    loosened = _loosen_as_an_older_calyx_left_it(cx, cid, pod[0])
    before = _probe(NOBODY, _request(cx, logs, loosened, []))
    assert str(cx.daemon.root / "containers" / cid / "config.json") in before["reached_read"]  # as it was

    cx.daemon.start()
    paths = [*_container_paths(cx, cid), *_pod_paths(cx, pod[0]), *_state_paths(cx)]
    report = _probe(NOBODY, _request(cx, logs, paths, [cx.daemon.run_root / "shm" / pod[0]]))
    _assert_nothing_for_nobody(cx, report)
    assert os.stat(cx.daemon.root).st_mode & 0o777 == 0o711
    # the running container was adopted and is untouched
    assert cx.status(cid).status.state == pb.CONTAINER_RUNNING
    assert cx.output(cid, "sh", "-c", "echo $API_TOKEN") == SECRET.decode() + "\n"
