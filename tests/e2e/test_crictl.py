"""crictl, as shipped (cri-tools v1.36, ../shared/tools/crictl), driving Calyx the way an operator does:
version and info, the image commands, a pod and a container from JSON configs as the cri-tools docs
write them, exec (streamed and sync, a failing command too), logs, stats, attach, port-forward, and
everything removed again.

Every call passes an empty ``--config`` and both endpoints, so a host's /etc/crictl.yaml (or crictl's
environment variables) cannot send it elsewhere. Without crictl the tests say so: they fail under
CI=true and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from critest.tools import find_tool, in_ci, where_looked
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.registry import free_port
from tests.waiting import wait_for

cx = container_fixtures.cx


class Crictl:
    """crictl against one daemon, with an empty config file and both endpoints given."""

    def __init__(self, binary: str, socket: Path, config: Path) -> None:
        config.write_text("")
        endpoint = f"unix://{socket}"
        self.argv = [binary, "--config", str(config), "--runtime-endpoint", endpoint]
        self.argv += ["--image-endpoint", endpoint, "--timeout", "60s"]
        hidden = ("CRI_CONFIG_FILE", "CONTAINER_RUNTIME_ENDPOINT", "IMAGE_SERVICE_ENDPOINT")
        self.env = {k: v for k, v in os.environ.items() if k not in hidden}

    def __call__(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``crictl ARGS`` to its end; a non-zero exit fails the test unless ``check`` is false."""
        done = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=180, env=self.env, check=False, **kw
        )
        if check and done.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done


@pytest.fixture(scope="module")
def crictl_binary() -> str:
    found = find_tool("crictl")
    if found is None:
        message = (
            f"crictl not found ({where_looked('crictl')}); take it from a cri-tools release "
            "and give its path with $CRICTL"
        )
        if in_ci():
            pytest.fail(message + " (CI must run these tests)")
        pytest.skip(message)
    return found


@pytest.fixture
def crictl(crictl_binary: str, cx: Cx, short_tmp: Path) -> Crictl:
    return Crictl(crictl_binary, cx.daemon.socket, short_tmp / "crictl.yaml")


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def pod_json(cx: Cx, name: str) -> dict[str, Any]:
    """A pod config as the cri-tools docs write one (crictl runp pod-config.json)."""
    return {
        "metadata": {"name": name, "namespace": "default", "attempt": 1, "uid": f"{name}-{time.time_ns()}"},
        "log_directory": str(cx.logs),
        "linux": {},
    }


def container_json(image: str, name: str, command: list[str]) -> dict[str, Any]:
    """A container config as the cri-tools docs write one (crictl create POD container-config.json ...)."""
    return {
        "metadata": {"name": name},
        "image": {"image": image},
        "command": command,
        "log_path": f"{name}.log",
        "linux": {},
    }


def write(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_crictl_runs_a_pod_and_a_container_from_the_docs_configs(
    crictl: Crictl, cx: Cx, short_tmp: Path
) -> None:
    version = crictl("version").stdout
    assert "RuntimeName:  calyx" in version and "RuntimeApiVersion:  v1" in version
    info = as_json(crictl("info"))
    assert {c["type"]: c["status"] for c in info["status"]["conditions"]}["RuntimeReady"] is True

    image = cx.registry.ref("calyx-test/busybox:latest")
    assert "Image is up to date for sha256:" in crictl("pull", image).stdout
    assert image in crictl("images").stdout.replace("   ", " ").replace(" latest", ":latest").split()
    image_id = as_json(crictl("inspecti", image))["status"]["id"]
    assert image_id.startswith("sha256:") and image_id[7:19] in crictl("images", "-q").stdout

    pod_file = write(short_tmp / "pod-config.json", pod_json(cx, "crictl-pod"))
    pod = crictl("runp", pod_file).stdout.strip()
    cx.pods.append(pod)  # removed by the fixture if the test ends early
    assert as_json(crictl("inspectp", pod))["status"]["state"] == "SANDBOX_READY"
    script = "echo hello from crictl; echo to stderr >&2; while true; do sleep 1; done"
    ctr_file = write(
        short_tmp / "container-config.json", container_json(image, "crictl-ctr", ["sh", "-c", script])
    )
    cid = crictl("create", pod, ctr_file, pod_file).stdout.strip()
    assert as_json(crictl("inspect", cid))["status"]["state"] == "CONTAINER_CREATED"
    crictl("start", cid)
    assert cid in crictl("ps", "-q").stdout.split()
    listed = as_json(crictl("ps", "--pod", pod, "-o", "json"))["containers"]
    assert [(c["id"], c["state"]) for c in listed] == [(cid, "CONTAINER_RUNNING")]
    status = as_json(crictl("inspect", cid))
    assert status["status"]["state"] == "CONTAINER_RUNNING"
    assert status["status"]["logPath"] == str(cx.logs / "crictl-ctr.log")

    assert crictl("exec", cid, "echo", "streamed").stdout == "streamed\n"
    # --sync is ExecSync; crictl prints its stdout and stderr with a line break after each
    assert crictl("exec", "--sync", cid, "echo", "synced").stdout.strip() == "synced"
    # crictl 1.36 exits 1 for a failing command and names its status on stderr
    failed = crictl("exec", cid, "sh", "-c", "echo partial; exit 3", check=False)
    assert (failed.returncode, failed.stdout) == (1, "partial\n")
    assert "command terminated with exit code 3" in failed.stderr
    failed = crictl("exec", "--sync", cid, "sh", "-c", "echo partial; exit 3", check=False)
    assert failed.returncode == 1 and "exited with 3" in failed.stderr, failed

    def logged() -> bool:
        logs = crictl("logs", cid)
        return "hello from crictl" in logs.stdout and "to stderr" in logs.stderr

    wait_for(logged, "crictl logs shows the container's stdout and stderr")
    stats = as_json(crictl("stats", "-o", "json", "--id", cid))["stats"]
    assert [s["attributes"]["id"] for s in stats] == [cid]
    assert int(stats[0]["memory"]["workingSetBytes"]["value"]) > 0

    crictl("stop", "--timeout", "1", cid)
    assert as_json(crictl("inspect", cid))["status"]["state"] == "CONTAINER_EXITED"
    crictl("rm", cid)
    assert crictl("ps", "-a", "-q").stdout.strip() == ""
    crictl("stopp", pod)
    crictl("rmp", pod)
    assert crictl("pods", "-q").stdout.strip() == ""
    crictl("rmi", image)
    assert image_id[7:19] not in crictl("images", "-q").stdout


def test_crictl_run_creates_pod_and_container_in_one_go(crictl: Crictl, cx: Cx, short_tmp: Path) -> None:
    image = cx.registry.ref("calyx-test/busybox:latest")
    pod_file = write(short_tmp / "pod.json", pod_json(cx, "crictl-run"))
    ctr_file = write(short_tmp / "ctr.json", container_json(image, "top", ["top"]))
    cid = crictl("run", "--with-pull", ctr_file, pod_file).stdout.strip().splitlines()[-1]
    assert as_json(crictl("inspect", cid))["status"]["state"] == "CONTAINER_RUNNING"
    pod = as_json(crictl("ps", "--id", cid, "-o", "json"))["containers"][0]["podSandboxId"]
    assert as_json(crictl("inspectp", pod))["status"]["metadata"]["name"] == "crictl-run"
    crictl("stopp", pod)
    crictl("rmp", pod)
    assert crictl("ps", "-a", "-q").stdout.strip() == ""


def test_crictl_attach_and_port_forward(crictl: Crictl, cx: Cx, short_tmp: Path) -> None:
    pod_file = write(short_tmp / "pod.json", pod_json(cx, "crictl-stream"))
    pod = crictl("runp", pod_file).stdout.strip()
    cx.pods.append(pod)  # removed by the fixture whatever happens below

    def started(name: str, image: str, command: list[str], **extra: Any) -> str:
        config = container_json(cx.image(image), name, command) | extra
        cid = crictl("create", pod, write(short_tmp / f"{name}.json", config), pod_file).stdout.strip()
        crictl("start", cid)
        return cid

    echo = started(
        "echo", "calyx-test/busybox:latest", ["sh", "-c", "read l; echo got:$l"], stdin=True, stdin_once=True
    )
    attached = crictl("attach", "--stdin", echo, input="hi\n")
    assert "got:hi" in attached.stdout

    page = "mkdir /srv && echo crictl-pf > /srv/index.html && exec httpd -f -p 80 -h /srv"
    started("web", "calyx-test/web:latest", ["sh", "-c", page])
    local = free_port()
    forward = subprocess.Popen(
        [*crictl.argv, "port-forward", pod, f"{local}:80"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=crictl.env,
    )
    try:

        def answered() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=5) as reply:
                    return bool(reply.read() == b"crictl-pf\n")
            except OSError:
                return False

        wait_for(answered, "crictl port-forward reaches httpd in the pod")
    finally:
        forward.terminate()
        forward.wait(30)
