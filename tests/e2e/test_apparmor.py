"""AppArmor profiles of containers (cri/containers/apparmor.py, sandbox/apparmor.py) through the CRI API.

On a host without AppArmor (this kind of test machine) a Localhost profile must be refused, never
dropped; RuntimeDefault and Unconfined run unconfined. On a host with AppArmor (the node lab,
tests/node/run.sh) the profile is checked where the kernel keeps it, /proc/<pid>/attr/current, and its
rules are seen to hold from inside the container.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri.api import api_pb2 as pb
from sandbox.apparmor import DEFAULT_PROFILE, AppArmor
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.waiting import wait_for

cx = container_fixtures.cx

ON = AppArmor().enabled()
needs_apparmor = pytest.mark.skipif(
    not ON, reason="AppArmor is not enabled on this host (the node lab has it)"
)


def security(privileged: bool = False, **kw: object) -> pb.LinuxContainerConfig:
    caps = pb.Capability(add_capabilities=["SYS_ADMIN"])
    sc = pb.LinuxContainerSecurityContext(capabilities=caps, privileged=privileged, **kw)  # type: ignore[arg-type]
    return pb.LinuxContainerConfig(security_context=sc)


def localhost(name: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=name)


def runtime_spec(cx: Cx, cid: str) -> dict[str, object]:
    info = json.loads(cx.status(cid, verbose=True).info["info"])
    return dict(info["runtimeSpec"])


def refused(cx: Cx, pod: tuple[str, object], name: str, linux: pb.LinuxContainerConfig) -> grpc.StatusCode:
    """The code CreateContainer fails with; the pod must be left without a container of that name."""
    config = cx.config(name, ["sleep", "1000"], linux=linux)
    code = cx.code(cx.create, pod, config)
    listed = cx.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod[0])))
    assert name not in [c.metadata.name for c in listed.containers]
    return code


def test_hostile_profile_names_are_refused(cx: Cx) -> None:
    pod = cx.pod()
    for name in ["two words", "line\nbreak", "nul\x00byte"]:
        assert refused(cx, pod, "bad", security(apparmor=localhost(name))) == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(cx, pod, "empty", security(apparmor=localhost(""))) == grpc.StatusCode.INVALID_ARGUMENT
    for deprecated in ["docker-default", "localhost/", "localhost/a b"]:
        linux = security(apparmor_profile=deprecated)
        assert refused(cx, pod, "old", linux) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.skipif(ON, reason="this host has AppArmor: see the tests below")
def test_without_apparmor_a_localhost_profile_is_refused_not_dropped(cx: Cx) -> None:
    pod = cx.pod()
    linux = security(apparmor=localhost("calyx-test-profile"))
    assert refused(cx, pod, "new", linux) == grpc.StatusCode.FAILED_PRECONDITION
    linux = security(apparmor_profile="localhost/calyx-test-profile")
    assert refused(cx, pod, "old", linux) == grpc.StatusCode.FAILED_PRECONDITION
    # Nothing can confine here: RuntimeDefault and Unconfined run, with no profile in the spec.
    for kind in (pb.SecurityProfile.RuntimeDefault, pb.SecurityProfile.Unconfined):
        cid = cx.run(
            pod, f"k{kind}", ["sleep", "1000"], linux=security(apparmor=pb.SecurityProfile(profile_type=kind))
        )
        assert cx.status(cid).status.state == pb.CONTAINER_RUNNING
        assert "apparmorProfile" not in runtime_spec(cx, cid)["process"]  # type: ignore[operator]


# --- with AppArmor (the node lab) ----------------------------------------------------------------------


@pytest.fixture
def test_profile() -> Iterator[str]:
    """A loaded profile of our own that forbids writing /tmp/denied*; unloaded at the end."""
    name = f"calyx-test-{secrets.token_hex(4)}"
    text = f"""profile {name} flags=(attach_disconnected,mediate_deleted) {{
  file, network, capability, signal, ptrace, unix, mount, umount, pivot_root,
  deny /tmp/denied* wl,
}}
"""
    subprocess.run(["apparmor_parser", "--replace", "--skip-cache"], input=text.encode(), check=True)
    try:
        yield name
    finally:
        subprocess.run(["apparmor_parser", "--remove"], input=text.encode(), check=True)


def attr_current(cx: Cx, cid: str) -> str:
    """The AppArmor label of the container's own process, read from the host once it runs the container's
    command (``sleep`` in these tests): runc's init asks for the profile on exec, and StartContainer can
    return before that exec. Not the container's PID 1: in a pod sharing its PID namespace, that is the
    pod's catatonit, unconfined whatever the container asked."""
    pid = json.loads(cx.status(cid, verbose=True).info["info"])["pid"]
    proc = Path(f"/proc/{pid}")
    wait_for(lambda: (proc / "comm").read_text() == "sleep\n", f"container {cid} to run its command")
    return (proc / "attr" / "current").read_text().strip().rstrip("\x00")


@needs_apparmor
def test_runtime_default_and_unconfined_as_asked(cx: Cx) -> None:
    pod = cx.pod()
    # Nothing asked is RuntimeDefault: Calyx's profile, loaded by the daemon, enforced.
    plain = cx.run(pod, "plain", ["sleep", "1000"], linux=security())
    assert attr_current(cx, plain) == f"{DEFAULT_PROFILE} (enforce)"
    assert AppArmor().loaded().get(DEFAULT_PROFILE) == "enforce"
    # An exec'd process gets the container's profile too.
    assert cx.output(plain, "cat", "/proc/self/attr/current").startswith(DEFAULT_PROFILE)
    # The profile holds even with CAP_SYS_ADMIN: no new mounts.
    assert cx.exec(plain, "mount", "-t", "tmpfs", "none", "/tmp").exit_code != 0
    runtime_default = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    explicit = cx.run(pod, "explicit", ["sleep", "1000"], linux=security(apparmor=runtime_default))
    assert attr_current(cx, explicit) == f"{DEFAULT_PROFILE} (enforce)"

    unconfined = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    free = cx.run(pod, "free", ["sleep", "1000"], linux=security(apparmor=unconfined))
    assert attr_current(cx, free) == "unconfined"
    assert cx.exec(free, "mount", "-t", "tmpfs", "none", "/tmp").exit_code == 0
    old = cx.run(pod, "old", ["sleep", "1000"], linux=security(apparmor_profile="unconfined"))
    assert attr_current(cx, old) == "unconfined"


@needs_apparmor
def test_privileged_runs_unconfined_by_default(cx: Cx) -> None:
    pod = cx.pod(
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(privileged=True))
    )
    cid = cx.run(pod, "priv", ["sleep", "1000"], linux=security(privileged=True))
    assert attr_current(cx, cid) == "unconfined"


@needs_apparmor
def test_localhost_profile_applied_when_loaded_refused_when_not(cx: Cx, test_profile: str) -> None:
    pod = cx.pod()
    assert AppArmor().loaded().get(test_profile) == "enforce"
    cid = cx.run(pod, "local", ["sleep", "1000"], linux=security(apparmor=localhost(test_profile)))
    assert attr_current(cx, cid) == f"{test_profile} (enforce)"
    assert cx.exec(cid, "touch", "/tmp/denied-here").exit_code != 0
    assert cx.exec(cid, "touch", "/tmp/allowed-here").exit_code == 0
    # The deprecated form, and the new field winning over it.
    old = cx.run(pod, "old", ["sleep", "1000"], linux=security(apparmor_profile=f"localhost/{test_profile}"))
    assert attr_current(cx, old) == f"{test_profile} (enforce)"
    both = security(apparmor=localhost(test_profile), apparmor_profile="unconfined")
    assert attr_current(cx, cx.run(pod, "both", ["sleep", "1000"], linux=both)) == f"{test_profile} (enforce)"

    missing = f"calyx-test-missing-{secrets.token_hex(4)}"
    assert (
        refused(cx, pod, "missing", security(apparmor=localhost(missing)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
