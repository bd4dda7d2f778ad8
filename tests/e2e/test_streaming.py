"""Exec, attach and port-forward through a real daemon, real containers (runc under conmon) in real
pods, pulled from the loopback test registry. SPDY via tests/spdy_client.py (written from the spec),
WebSocket via the ``websockets`` client.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass

import grpc
import pytest
from websockets.sync.client import connect

from cri.api import api_pb2 as pb
from tests.daemon import Daemon
from tests.net_fixtures import host_network_linux, pod_config, run_pod
from tests.registry import free_port
from tests.spdy_client import SpdyClient
from tests.spdystream_client import run_spdyexec
from tests.streaming_clients import V4, channel, portforward_get, spdy, ws_messages
from tests.waiting import wait_for


@dataclass
class Env:
    daemon: Daemon
    pod_id: str
    registry: str

    def container(self, command: list[str], image: str = "calyx-test/busybox:latest", **kw) -> str:
        ref = f"{self.registry}/{image}"
        self.daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=f"c{time.monotonic_ns()}"),
            image=pb.ImageSpec(image=ref),
            command=command,
            log_path=f"c{time.monotonic_ns()}.log",
            **kw,
        )
        pod = self.daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=self.pod_id))
        cid = self.daemon.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=self.pod_id, config=config, sandbox_config=pod_config()),
            timeout=120,
        ).container_id
        del pod
        self.daemon.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
        return cid

    def fetch_via_portforward(self, port: int, path: str = "/index.html") -> bytes:
        url = self.daemon.runtime.PortForward(
            pb.PortForwardRequest(pod_sandbox_id=self.pod_id, port=[port])
        ).url
        return portforward_get(url, port, path)

    def exec_url(self, cid: str, cmd: list[str], **kw) -> str:
        kw.setdefault("stdout", True)
        request = pb.ExecRequest(container_id=cid, cmd=cmd, **kw)
        return self.daemon.runtime.Exec(request).url

    def daemon_rss_kib(self) -> int:
        assert self.daemon.proc is not None
        with open(f"/proc/{self.daemon.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


def _env(builtin_net, image_registry, short_tmp, daemon_env: dict[str, str] | None = None, **pod) -> Env:
    """A daemon on the built-in network that pulls from the test registry, with one pod running."""
    registries = {image_registry.host: {"insecure": True}}
    net = builtin_net(env=daemon_env, config={"images": {"registries": registries}})
    config = pod_config(log_directory=str(short_tmp / "logs"), **pod)
    return Env(net.daemon, run_pod(net.daemon, config), image_registry.host)


@pytest.fixture
def env(builtin_net, image_registry, short_tmp) -> Env:
    return _env(builtin_net, image_registry, short_tmp)


@pytest.fixture
def host_env(builtin_net, image_registry, short_tmp) -> Env:
    return _env(builtin_net, image_registry, short_tmp, linux=host_network_linux())


def test_exec_spdy_output_stdin_and_exit_codes(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(cid, ["sh", "-c", "echo out; echo err >&2; exit 7"], stderr=True)
    client, s = spdy(url, ("error", "stdout", "stderr"))
    assert s["stdout"].read_all() == b"out\n"
    assert s["stderr"].read_all() == b"err\n"
    status = json.loads(s["error"].read_all())
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    client.close()

    url = env.exec_url(cid, ["sh", "-c", "cat; hostname >/dev/null"], stdin=True)
    client, s = spdy(url, ("error", "stdin", "stdout"))
    s["stdin"].write(b"through runc\n")
    s["stdin"].close()
    assert s["stdout"].read_all() == b"through runc\n"
    assert json.loads(s["error"].read_all()) == {"metadata": {}, "status": "Success"}
    client.close()


def test_exec_runs_inside_the_container(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    client, s = spdy(env.exec_url(cid, ["readlink", "/proc/self/ns/mnt"]), ("error", "stdout"))
    inside = s["stdout"].read_all().decode().strip()
    assert inside.startswith("mnt:[") and inside != os.readlink("/proc/self/ns/mnt")
    client.close()


def test_exec_tty_starts_with_the_clients_size_and_follows_resizes(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    # After "go": report the size until the resize has arrived (at most 200 polls, 10 s: the exec then
    # ends and the assertion below fails), so the test takes as long as the resize does, not 10 s.
    script = (
        "stty size; read go; i=0; while [ $i -lt 200 ]; do s=$(stty size); echo $s; "
        '[ "$s" = "20 50" ] && break; i=$((i+1)); sleep 0.05; done'
    )
    url = env.exec_url(cid, ["sh", "-c", script], tty=True, stdin=True)
    client, s = spdy(url, ("error", "stdin", "stdout", "resize"))
    s["resize"].write(json.dumps({"Width": 111, "Height": 33}).encode())
    first = s["stdout"].read()
    assert first.startswith(b"33 111"), first  # the size the exec started with
    s["resize"].write(json.dumps({"Width": 50, "Height": 20}).encode())
    s["stdin"].write(b"go\r")
    assert b"20 50" in s["stdout"].read_all()
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_exec_websocket_v5_and_v4(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(cid, ["sh", "-c", "cat; exit 3"], stdin=True).replace("http://", "ws://")
    with connect(url, subprotocols=["v5.channel.k8s.io"]) as ws:
        ws.send(b"\x00via websocket\n")
        ws.send(b"\xff\x00")
        messages = ws_messages(ws)
    assert channel(messages, 1) == b"via websocket\n"
    status = json.loads(channel(messages, 3))
    assert status["details"]["causes"][0]["message"] == "3"


def test_large_exec_output_does_not_grow_the_daemon(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    before = env.daemon_rss_kib()
    url = env.exec_url(cid, ["head", "-c", "100000000", "/dev/zero"])
    client, s = spdy(url, ("error", "stdout"), flow_control=False)
    assert s["stdout"].drain_count() == 100_000_000
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()
    grown = env.daemon_rss_kib() - before
    assert grown < 30 * 1024, f"daemon RSS grew by {grown} KiB moving 100 MB"


def processes_with_cmdline(wanted: bytes) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == wanted:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def sleeping_exec(env: Env, cid: str) -> tuple[SpdyClient, bytes]:
    """An exec session whose process is a ``sleep`` with a command line no one else runs, running: the
    client and that command line (as /proc/<pid>/cmdline has it)."""
    seconds = str(100000 + int.from_bytes(os.urandom(3), "big"))
    url = env.exec_url(cid, ["sh", "-c", f"echo ready; exec sleep {seconds}"])
    client, s = spdy(url, ("error", "stdout"))
    assert s["stdout"].read() == b"ready\n"
    wanted = f"sleep\0{seconds}\0".encode()
    # "ready" comes before the shell execs sleep: wait for the exec to have happened
    wait_for(lambda: bool(processes_with_cmdline(wanted)), "exec'd sleep running")
    return client, wanted


def test_client_disconnect_kills_the_exec_process(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    client, wanted = sleeping_exec(env, cid)
    client.close()
    wait_for(lambda: not processes_with_cmdline(wanted), "exec'd process killed after the client left")


def test_attach_to_the_containers_stdio(env: Env) -> None:
    cid = env.container(
        ["sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done"], stdin=True, stdin_once=True
    )
    url = env.daemon.runtime.Attach(
        pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    ).url
    client, s = spdy(url, ("error", "stdin", "stdout", "stderr"))
    s["stdin"].write(b"hello\n")
    assert s["stdout"].read() == b"got:hello\n"
    assert s["stderr"].read() == b"err:hello\n"
    s["stdin"].close()  # stdin_once: the container's stdin closes, the loop ends, the container exits
    assert s["stdout"].read_all() == b""
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_portforward_to_an_http_server_in_the_pod(env: Env) -> None:
    env.container(
        ["sh", "-c", "mkdir /srv && echo hello-from-pod > /srv/index.html && exec httpd -f -p 80 -h /srv"],
        image="calyx-test/web:latest",
    )
    url = env.daemon.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=env.pod_id, port=[80])).url
    replies: list[bytes] = []
    wait_for(
        lambda: replies.append(env.fetch_via_portforward(80)) or replies[-1].endswith(b"hello-from-pod\n"),
        "httpd answers",
    )
    assert b" 200 " in replies[-1].split(b"\r\n", 1)[0]
    # the same over WebSocket, kubelet-proxy style
    with connect(url.replace("http://", "ws://"), subprotocols=[V4]) as ws:
        port = struct.pack("<H", 80)
        assert {ws.recv(timeout=60), ws.recv(timeout=60)} == {b"\x00" + port, b"\x01" + port}
        ws.send(b"\x00GET /index.html HTTP/1.0\r\n\r\n")
        data = channel(ws_messages(ws), 0)
    assert b" 200 " in data.split(b"\r\n", 1)[0] and data.endswith(b"hello-from-pod\n")


def test_tokens_are_single_use_and_expire(env: Env, daemon_factory) -> None:
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(cid, ["true"])
    client, s = spdy(url, ("error", "stdout"))
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()
    assert SpdyClient(url, [V4]).status == 404
    assert SpdyClient(url.rsplit("/", 1)[0] + "/bogus", [V4]).status == 404


def test_rpc_validation(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    cases = [
        pb.ExecRequest(container_id=cid, cmd=["true"], tty=True, stdout=True, stderr=True),
        pb.ExecRequest(container_id=cid, cmd=["true"]),
        pb.ExecRequest(container_id=cid, cmd=[], stdout=True),
    ]
    for request in cases:
        with pytest.raises(grpc.RpcError) as err:
            env.daemon.runtime.Exec(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        env.daemon.runtime.Exec(pb.ExecRequest(container_id="f" * 64, cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        env.daemon.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id="f" * 64, port=[80]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_portforward_for_a_host_network_pod_reaches_the_hosts_localhost(host_env: Env) -> None:
    port = free_port()
    host_env.container(
        [
            "sh",
            "-c",
            f"mkdir /srv && echo host-net > /srv/index.html && exec httpd -f -p 127.0.0.1:{port} -h /srv",
        ],
        image="calyx-test/web:latest",
    )
    replies: list[bytes] = []
    wait_for(
        lambda: replies.append(host_env.fetch_via_portforward(port)) or replies[-1].endswith(b"host-net\n"),
        "httpd on the host network answers",
    )


def test_attach_with_a_terminal_and_resize(env: Env) -> None:
    cid = env.container(["sh"], stdin=True, tty=True)
    url = env.daemon.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, tty=True)).url
    client, s = spdy(url, ("error", "stdin", "stdout", "resize"))
    s["resize"].write(json.dumps({"Width": 97, "Height": 31}).encode())
    seen = b""

    def size_shown() -> bool:
        nonlocal seen
        s["stdin"].write(b"stty size\r")
        try:
            while b"31 97" not in seen:
                chunk = s["stdout"].read(2)
                if chunk is None:
                    return False
                seen += chunk
        except Exception:
            return False
        return True

    wait_for(size_shown, "the container's terminal has the client's size")
    s["stdin"].write(b"exit\r")
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()


def test_exec_in_a_stopped_container_is_failed_precondition(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    env.daemon.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        env.daemon.runtime.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_exec_process_left_by_a_killed_daemon_is_killed_at_restart(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    client, wanted = sleeping_exec(env, cid)
    env.daemon.kill9()
    client.close()
    assert processes_with_cmdline(wanted), "the exec'd process outlives the killed daemon"
    env.daemon.start()
    wait_for(
        lambda: not processes_with_cmdline(wanted), "orphaned exec process killed by the restarted daemon"
    )
    # and the container itself is untouched
    client, s = spdy(env.exec_url(cid, ["echo", "still here"]), ("error", "stdout"))
    assert s["stdout"].read_all() == b"still here\n"
    client.close()


def test_exec_with_the_spdystream_client_kubectl_uses(env: Env, spdyexec) -> None:
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(
        cid, ["sh", "-c", "cat; echo err >&2; head -c 5000000 /dev/zero; exit 9"], stdin=True, stderr=True
    )
    proc, status = run_spdyexec(spdyexec, url, "error,stdin,stdout,stderr", stdin=b"kubectl-like\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"kubectl-like\n" + b"\0" * 5_000_000
    assert proc.stderr == b"err\n"
    assert json.loads(status)["details"]["causes"] == [{"reason": "ExitCode", "message": "9"}]


def test_attach_over_websocket(env: Env) -> None:
    cid = env.container(["sh", "-c", "while read l; do echo ws:$l; done"], stdin=True, stdin_once=True)
    url = env.daemon.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True)).url
    with connect(url.replace("http://", "ws://"), subprotocols=["v5.channel.k8s.io"]) as ws:
        assert ws.recv(timeout=60) == b"\x01"
        ws.send(b"\x00hello\n")
        assert ws.recv(timeout=60) == b"\x01ws:hello\n"
        ws.send(b"\xff\x00")  # close stdin: the loop ends, the container exits, the session ends
        rest = ws_messages(ws)
    assert json.loads(channel(rest, 3))["status"] == "Success"


def test_concurrent_execs_in_one_container(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cid = env.container(["sleep", "3600"])

    def one(i: int) -> bytes:
        client, s = spdy(env.exec_url(cid, ["sh", "-c", f"sleep 1; echo {i}"]), ("error", "stdout"))
        out = s["stdout"].read_all()
        assert json.loads(s["error"].read_all())["status"] == "Success"
        client.close()
        return out

    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(one, range(16)))
    assert outputs == [f"{i}\n".encode() for i in range(16)]


def test_daemon_shutdown_ends_sessions_and_kills_their_processes(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    client, wanted = sleeping_exec(env, cid)
    assert env.daemon.stop() == 0
    assert client.closed.wait(30)
    wait_for(lambda: not processes_with_cmdline(wanted), "exec process killed at shutdown")
    client.close()


def test_exec_tty_over_websocket_with_resize(env: Env) -> None:
    cid = env.container(["sleep", "3600"])
    url = env.exec_url(cid, ["stty", "size"], tty=True).replace("http://", "ws://")
    with connect(url, subprotocols=["v5.channel.k8s.io"]) as ws:
        ws.send(b"\x04" + json.dumps({"Width": 77, "Height": 22}).encode())
        messages = ws_messages(ws)
    assert b"22 77" in channel(messages, 1)
    assert json.loads(channel(messages, 3))["status"] == "Success"


def _exec_sync(env: Env, cid: str, script: str) -> str:
    request = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=60)
    result = env.daemon.runtime.ExecSync(request, timeout=120)
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def _tty_exec(env: Env, cid: str, script: str) -> str:
    # a client of a tty opens the resize stream too (kubelet's server waits for it, and so does ours)
    client, s = spdy(env.exec_url(cid, ["sh", "-c", script], tty=True), ("error", "stdout", "resize"))
    out = s["stdout"].read_all().decode()
    assert json.loads(s["error"].read_all())["status"] == "Success"
    client.close()
    return out


def test_term_is_xterm_with_a_terminal_unless_the_container_sets_it(env: Env) -> None:
    """As CRI-O: a process with a terminal (a tty exec, a tty container) gets TERM=xterm where its
    environment has no TERM; without a terminal TERM stays unset; a TERM of the config is kept."""
    show = 'echo "TERM=[${TERM-unset}]"'
    plain = env.container(["sleep", "3600"])
    assert _tty_exec(env, plain, show).strip() == "TERM=[xterm]"
    assert _exec_sync(env, plain, show) == "TERM=[unset]\n"

    # the container's own process writes what it got
    own = f"{show} > /tmp/term; exec sleep 3600"

    def own_term(cid: str) -> str:
        return wait_for(lambda: _exec_sync(env, cid, "cat /tmp/term 2>/dev/null || true"), "/tmp/term")

    tty = env.container(["sh", "-c", own], tty=True)
    assert own_term(tty) == "TERM=[xterm]\n"
    assert _exec_sync(env, tty, show) == "TERM=[xterm]\n"  # an exec inherits the container's env
    assert _tty_exec(env, tty, show).strip() == "TERM=[xterm]"
    assert own_term(env.container(["sh", "-c", own])) == "TERM=[unset]\n"

    chosen = env.container(["sh", "-c", own], tty=True, envs=[pb.KeyValue(key="TERM", value=b"vt100")])
    assert own_term(chosen) == "TERM=[vt100]\n"
    assert _tty_exec(env, chosen, show).strip() == "TERM=[vt100]"
