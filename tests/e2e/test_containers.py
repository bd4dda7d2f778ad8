"""Containers through the CRI API: lifecycle, status, list, logs, stop/kill, exec, resources, restart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc

from cri.api import api_pb2 as pb
from cri.api import api_pb2_grpc as pb_grpc
from cri.containers.execsync import MAX_EXEC_OUTPUT
from tests import cgroup_files, container_fixtures
from tests.container_fixtures import Cx
from tests.waiting import wait_for

cx = container_fixtures.cx


def test_run_to_completion_status_logs_and_list(cx: Cx) -> None:
    pod = cx.pod()
    image = cx.image()
    config = cx.config(
        "hello",
        ["sh", "-c", "echo hello; echo oops >&2; exit 0"],
        image=image,
        labels={"app": "hello"},
        annotations={"note": "x=y"},
    )
    cid = cx.create(pod, config)
    assert len(cid) == 64
    st = cx.status(cid).status
    assert st.state == pb.CONTAINER_CREATED and st.created_at > 0 and st.started_at == 0
    cx.start(cid)
    st = cx.wait_exit(cid)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert st.finished_at >= st.started_at > st.created_at
    assert st.metadata.name == "hello" and st.image.image == image
    assert st.image_ref.startswith(
        f"{cx.registry.host}/calyx-test/busybox@sha256:"
    ) or st.image_ref.startswith("sha256:")
    assert st.image_id.startswith("sha256:")
    assert dict(st.labels) == {"app": "hello"} and dict(st.annotations) == {"note": "x=y"}
    assert st.log_path == str(cx.logs / "hello.log")
    records = (cx.logs / "hello.log").read_text().splitlines()
    assert [r.split(" ", 1)[1] for r in records] == ["stdout F hello", "stderr F oops"]
    # RFC 3339 with nanoseconds and an offset
    assert records[0].split(" ")[0][19] == "." and "T" in records[0].split(" ")[0]

    other = cx.run(pod, "sleeper", ["sleep", "1000"], labels={"app": "other"})
    rt = cx.rt

    def ids(**flt: object) -> set[str]:
        req = pb.ListContainersRequest(filter=pb.ContainerFilter(**flt))  # type: ignore[arg-type]
        return {c.id for c in rt.ListContainers(req).containers}

    assert ids() == {cid, other}
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)) == {other}
    assert ids(state=pb.ContainerStateValue(state=pb.CONTAINER_EXITED)) == {cid}
    assert ids(label_selector={"app": "hello"}) == {cid}
    assert ids(id=other[:12]) == {other}
    assert ids(pod_sandbox_id=pod[0]) == {cid, other}
    assert ids(pod_sandbox_id="f" * 64) == set()
    streamed = {c.id for r in rt.StreamContainers(pb.StreamContainersRequest()) for c in r.containers}
    assert streamed == ids()
    listed = {c.id: c for c in rt.ListContainers(pb.ListContainersRequest()).containers}
    item = listed[cid]  # served from a cached encoding: it must follow the state change
    assert (item.state, item.created_at, item.metadata.name) == (pb.CONTAINER_EXITED, st.created_at, "hello")
    assert dict(item.labels) == {"app": "hello"} and dict(item.annotations) == {"note": "x=y"}
    assert (item.image.image, item.image_id, item.pod_sandbox_id) == (image, st.image_id, pod[0])

    # kubelet creates by image id; status then names the image by a repo tag
    by_id = cx.create(pod, cx.config("byid", ["true"], image=st.image_id))
    assert cx.status(by_id).status.image.image == image

    info = json.loads(cx.status(other, verbose=True).info["info"])
    assert info["pid"] > 0 and os.path.exists(f"/proc/{info['pid']}")
    assert info["runtimeSpec"]["process"]["args"] == ["sleep", "1000"]
    # a unique prefix names the container
    assert cx.status(other[:8]).status.id == other


def test_create_errors_are_clear_and_leave_no_trace(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.create(pod, cx.config("dup", ["true"]))
    code = cx.code(cx.create, pod, cx.config("dup", ["true"]))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    again = cx.config("dup", ["true"])
    again.metadata.attempt = 1
    cx.create(pod, again)
    assert cx.code(cx.create, ("f" * 64, pod[1]), cx.config("x", ["true"])) == grpc.StatusCode.NOT_FOUND
    bad_image = cx.config("noimage", ["true"], image="sha256:" + "0" * 64)
    assert cx.code(cx.create, pod, bad_image) == grpc.StatusCode.NOT_FOUND
    group_only = cx.config("grouponly", ["true"])
    group_only.linux.security_context.run_as_group.value = 5
    assert cx.code(cx.create, pod, group_only) == grpc.StatusCode.INVALID_ARGUMENT
    listed = cx.rt.ListContainers(pb.ListContainersRequest()).containers
    assert len(listed) == 2
    assert cx.code(cx.status, "f" * 64) == grpc.StatusCode.NOT_FOUND
    # the failed creates left no container dir behind
    dirs = os.listdir(cx.daemon.root / "containers")
    assert sorted(dirs) == sorted(c.id for c in listed)
    assert cid in dirs


def test_stop_timeout_zero_kills_at_once_and_stop_signal_is_used(cx: Cx) -> None:
    pod = cx.pod()
    stubborn = cx.run(pod, "stubborn", ["sh", "-c", "while true; do sleep 1; done"])
    cx.stop(stubborn, 0)
    st = cx.status(stubborn).status
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 137, "Error")
    cx.stop(stubborn, 0)  # idempotent

    polite = cx.run(
        pod,
        "polite",
        ["sh", "-c", "trap 'exit 0' QUIT; touch /tmp/ready; while true; do sleep 0.1; done"],
        stop_signal=pb.SIGQUIT,
    )
    while cx.exec(polite, "test", "-e", "/tmp/ready").exit_code != 0:
        time.sleep(0.05)
    cx.stop(polite, 60)
    st = cx.status(polite).status
    assert (st.exit_code, st.reason, st.stop_signal) == (0, "Completed", pb.SIGQUIT)

    # SIGTERM ignored (busybox sh as PID 1): SIGKILL after the timeout
    ignoring = cx.run(pod, "ignoring", ["sh", "-c", "while true; do sleep 1; done"])
    cx.stop(ignoring, 1)
    assert cx.status(ignoring).status.exit_code == 137

    # remove kills a running container, and is idempotent
    running = cx.run(pod, "running", ["sleep", "1000"])
    pid = json.loads(cx.status(running, verbose=True).info["info"])["pid"]
    cx.remove(running)
    cx.remove(running)
    assert not container_fixtures.process_runs(pid, "sleep")
    assert cx.code(cx.status, running) == grpc.StatusCode.NOT_FOUND
    assert cx.code(cx.start, stubborn) == grpc.StatusCode.FAILED_PRECONDITION


def test_exec_sync_output_exit_code_timeout_and_truncation(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "sleeper", ["sleep", "1000"])
    result = cx.exec(cid, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (result.exit_code, result.stdout, result.stderr) == (5, b"out\n", b"err\n")
    code = cx.code(cx.exec, cid, "sleep", "60", timeout=1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # kubelet's client accepts 16 MiB messages; so does this one
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(f"unix:{cx.daemon.socket}", options=options) as channel:
        big = pb_grpc.RuntimeServiceStub(channel).ExecSync(
            pb.ExecSyncRequest(cmd=["sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' x"], container_id=cid),
            timeout=120,
        )
    assert big.exit_code == 0
    assert len(big.stdout) == MAX_EXEC_OUTPUT and set(big.stdout) == {ord("x")}
    stopped = cx.run(pod, "done", ["true"])
    cx.wait_exit(stopped)
    assert cx.code(cx.exec, stopped, "true") == grpc.StatusCode.FAILED_PRECONDITION


def test_update_resources_shows_in_cgroup_files(cx: Cx) -> None:
    pod_id, pod_config = cx.pod()
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=64 * 1024 * 1024, cpu_shares=512)
    cid = cx.run(
        (pod_id, pod_config), "limited", ["sleep", "1000"], linux=pb.LinuxContainerConfig(resources=resources)
    )
    parent = pod_config.linux.cgroup_parent
    cgroup = f"{parent}/calyx-{cid}"
    seen = cx.output(cid, "cat", "/proc/self/cgroup")
    if cgroup_files.unified():  # a private cgroup namespace rooted at the container's cgroup
        assert seen.split() == ["0::/"]
        assert cgroup_files.procs(cgroup)
    else:
        assert f"memory:{cgroup}" in seen.replace(":memory:", "memory:")
    assert cgroup_files.memory_limit(cgroup) == 64 * 1024 * 1024
    assert cgroup_files.cpu_share(cgroup) == cgroup_files.shares(512)
    new = pb.LinuxContainerResources(memory_limit_in_bytes=96 * 1024 * 1024, cpu_shares=256)
    cx.rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=new))
    assert cgroup_files.memory_limit(cgroup) == 96 * 1024 * 1024
    assert cgroup_files.cpu_share(cgroup) == cgroup_files.shares(256)
    limit_file = "memory.max" if cgroup_files.unified() else "memory/memory.limit_in_bytes"
    inside = cx.output(cid, "cat", f"/sys/fs/cgroup/{limit_file}")
    assert int(inside) == 96 * 1024 * 1024
    st = cx.status(cid).status
    assert st.resources.linux.memory_limit_in_bytes == 96 * 1024 * 1024
    cx.stop(cid)
    cx.remove(cid)
    assert cgroup_files.dirs(cgroup) == []


def test_oom_kill_reports_137_and_oomkilled(cx: Cx) -> None:
    pod = cx.pod()
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=32 * 1024 * 1024)
    cid = cx.run(pod, "hog", ["tail", "/dev/zero"], linux=pb.LinuxContainerConfig(resources=resources))
    st = cx.wait_exit(cid)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")


def test_reopen_container_log_after_rotation(cx: Cx) -> None:
    """kubelet (and critest) look for the new log file as soon as ReopenContainerLog returns: the call
    returns only once conmon, which reopens on its own time, has made it."""
    pod = cx.pod()
    cid = cx.run(pod, "ticker", ["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    log = cx.logs / "ticker.log"
    while not log.exists() or "tick" not in log.read_text():
        time.sleep(0.05)
    for rotation in range(1, 6):
        log.rename(cx.logs / f"ticker.log.{rotation}")
        cx.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=60)
        assert log.exists(), f"rotation {rotation}: no new log file when ReopenContainerLog returned"
    deadline = time.monotonic() + 60
    while "stdout F tick" not in log.read_text():
        assert time.monotonic() < deadline, "conmon does not write to the reopened log"
        time.sleep(0.05)
    cx.stop(cid)
    code = cx.code(cx.rt.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=cid))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_stop_of_an_unknown_or_removed_container_succeeds(cx: Cx) -> None:
    """CRI: StopContainer of a container that is not there is no error (kubelet retries stops whose
    container went meanwhile; critest's idempotence spec). An empty id is still a bad request."""
    cx.rt.StopContainer(pb.StopContainerRequest(container_id="f" * 64, timeout=0), timeout=60)
    pod = cx.pod()
    cid = cx.run(pod, "gone", ["sleep", "1000"])
    cx.remove(cid)
    cx.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=60)
    code = cx.code(cx.rt.StopContainer, pb.StopContainerRequest(container_id=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stop of an unknown container" in cx.daemon.log()


def test_daemon_kill9_restart_adopts_containers_and_reports_exits_made_while_down(cx: Cx) -> None:
    pod = cx.pod()
    keep = cx.run(pod, "keep", ["sleep", "1000"])
    ends = cx.run(pod, "ends", ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; exit 7"])
    keep_pid = json.loads(cx.status(keep, verbose=True).info["info"])["pid"]
    cx.daemon.kill9()
    # the container exits while no daemon runs
    rootfs = cx.daemon.root / "containers" / ends / "rootfs"
    (rootfs / "tmp" / "go").touch()
    exit_file = cx.daemon.run_root / "exits" / ends
    deadline = time.monotonic() + 60
    while not exit_file.exists():
        assert time.monotonic() < deadline, "the container did not exit"
        time.sleep(0.05)
    cx.daemon.start()
    st = cx.status(keep).status
    assert st.state == pb.CONTAINER_RUNNING
    assert json.loads(cx.status(keep, verbose=True).info["info"])["pid"] == keep_pid
    st = cx.status(ends).status
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 7, "Error")
    cx.stop(keep, 0)
    assert cx.status(keep).status.exit_code == 137
    assert cx.output(cx.run(pod, "after", ["sleep", "1000"]), "echo", "alive") == "alive\n"


def _runs(cx: Cx, cid: str, argv: list[str]) -> bool:
    """Whether the container's PID 1 is ``argv``: StartContainer returns once runc's init is told to go,
    and it execs the command a moment later (until then /proc/1 is runc init, its arguments and env)."""
    return cx.output(cid, "cat", "/proc/1/cmdline").split("\0")[: len(argv)] == argv


def test_command_args_env_cwd_and_oom_score_adj(cx: Cx) -> None:
    pod = cx.pod()
    web = cx.image("calyx-test/web:latest")  # Cmd: httpd -f -p 80 -h /www
    # args alone replace the image's Cmd (no Entrypoint here: they are the command)
    cid = cx.run(pod, "args", [], image=web, args=["sleep", "1000"])
    wait_for(lambda: _runs(cx, cid, ["sleep", "1000"]), "the container to run args as its command")
    env = [pb.KeyValue(key="PATH", value=b"/bin"), pb.KeyValue(key="MINE", value=b"a=b")]
    envs = cx.run(pod, "env", ["sleep", "1000"], envs=env, working_dir="/made/by/calyx")
    wait_for(lambda: _runs(cx, envs, ["sleep", "1000"]), "the container to run its command")
    lines = cx.output(envs, "cat", "/proc/1/environ").split("\0")
    assert "PATH=/bin" in lines and "MINE=a=b" in lines and sum(x.startswith("PATH=") for x in lines) == 1
    assert cx.output(envs, "pwd").strip() == "/made/by/calyx"
    # oom_score_adj: honoured upwards, clamped (never below the daemon's own) downwards
    high = pb.LinuxContainerResources(oom_score_adj=500)
    up = cx.run(pod, "up", ["sleep", "1000"], linux=pb.LinuxContainerConfig(resources=high))
    assert cx.output(up, "cat", "/proc/1/oom_score_adj").strip() == "500"
    low = pb.LinuxContainerResources(oom_score_adj=-998)
    down = cx.run(pod, "down", ["sleep", "1000"], linux=pb.LinuxContainerConfig(resources=low))
    own = int(Path("/proc/self/oom_score_adj").read_text())  # the daemon runs with the test's value
    assert int(cx.output(down, "cat", "/proc/1/oom_score_adj")) == max(own, -998)
    # RuntimeDefault AppArmor: Calyx's profile where AppArmor is on, nothing to apply where it is off
    apparmor = pb.LinuxContainerSecurityContext(apparmor=pb.SecurityProfile(profile_type=0))
    aa = cx.run(pod, "aa", ["sleep", "1000"], linux=pb.LinuxContainerConfig(security_context=apparmor))
    assert cx.status(aa).status.state == pb.CONTAINER_RUNNING


def test_tty_container_and_image_in_use(cx: Cx) -> None:
    pod = cx.pod()
    image = cx.image("calyx-test/user-uid:latest")
    cid = cx.run(pod, "tty", ["sleep", "1000"], image=image, tty=True, stdin=True)
    assert cx.output(cid, "readlink", "/proc/1/fd/0") == "/dev/pts/0\n"
    image_id = cx.status(cid).status.image_id
    remove = pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id))
    assert cx.code(cx.daemon.images.RemoveImage, remove) == grpc.StatusCode.FAILED_PRECONDITION
    cx.stop(cid)
    cx.remove(cid)
    cx.daemon.images.RemoveImage(remove)


def test_pod_stop_and_remove_take_their_containers_and_events_tell(cx: Cx) -> None:
    events = cx.rt.GetContainerEvents(pb.GetEventsRequest(), timeout=120)
    pod = cx.pod()
    cid = cx.run(pod, "member", ["sleep", "1000"])
    pid = json.loads(cx.status(cid, verbose=True).info["info"])["pid"]
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    st = cx.status(cid).status
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 137)
    assert not container_fixtures.process_runs(pid, "sleep")
    late = cx.config("late", ["sleep", "1000"])
    assert cx.code(cx.create, pod, late) == grpc.StatusCode.FAILED_PRECONDITION
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod[0]), timeout=120)
    assert cx.code(cx.status, cid) == grpc.StatusCode.NOT_FOUND
    assert not (cx.daemon.root / "containers" / cid).exists()
    seen = []
    for event in events:
        if event.container_id == cid:
            seen.append(event.container_event_type)
            # the pod's status and its containers' statuses, this container first (cri/status_events.py)
            assert event.pod_sandbox_status.id == pod[0]
            assert event.containers_statuses[0].id == cid
        if pb.CONTAINER_DELETED_EVENT in seen:
            break
    events.cancel()
    assert seen == [
        pb.CONTAINER_CREATED_EVENT,
        pb.CONTAINER_STARTED_EVENT,
        pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT,
    ]


def test_parallel_creates_one_name_wins_and_others_all_run(cx: Cx) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pod = cx.pod()
    image = cx.image()

    def attempt(name: str) -> str:
        try:
            return cx.start(cx.create(pod, cx.config(name, ["sleep", "1000"], image=image)))
        except grpc.RpcError as err:
            return err.code().name

    with ThreadPoolExecutor(8) as pool:
        same = list(pool.map(attempt, ["same"] * 4))
        different = list(pool.map(attempt, [f"c{i}" for i in range(6)]))
    assert sorted(len(r) == 64 for r in same) == [False, False, False, True]
    assert sorted(r for r in same if len(r) != 64) == ["ALREADY_EXISTS"] * 3
    assert all(len(r) == 64 for r in different)
    running = cx.rt.ListContainers(
        pb.ListContainersRequest(
            filter=pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
        )
    ).containers
    assert len(running) == 7


def test_long_lines_are_split_into_partial_records(cx: Cx) -> None:
    pod = cx.pod()
    cid = cx.run(pod, "long", ["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a; echo; echo -n tail"])
    cx.wait_exit(cid)
    records = [r.split(" ", 3) for r in (cx.logs / "long.log").read_text().splitlines()]
    tags = [r[2] for r in records]
    # the last output has no newline: conmon leaves it a partial record
    assert tags[-2:] == ["F", "P"] and "P" in tags[:-2] and set(tags[:-2]) <= {"P", "F"}
    first_line = "".join(r[3] for r in records[: tags.index("F") + 1])
    assert first_line == "a" * 20000
    assert records[-1][3] == "tail"
