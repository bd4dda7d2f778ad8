"""The fuzz run: a hypothesis state machine driving a live daemon, and the properties checked after
every request it sends.

Rules walk objects through their whole life (run pod -> create -> start -> exec -> stop -> remove) with
valid requests carrying a few fuzzed fields, interleaved with batches of generic requests for any RPC
whose ids point at the objects alive in this example (or at ones removed before, or at nothing).
After each request: the status is not INTERNAL or UNKNOWN, the daemon process lives and ``Status``
still reports RuntimeReady. Each example ends by removing what it made.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any, ClassVar

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, multiple, precondition, rule

from cri.api import api_pb2 as pb
from tests.daemon import Daemon
from tests.fuzz import requests as rq
from tests.fuzz import values as v
from tests.fuzz.safety import Net
from tests.fuzz.world import World

CALL_TIMEOUT = 120.0  # a stop with a long grace period legitimately takes its time
EVENTS_TIMEOUT = 0.05  # GetContainerEvents streams until the client leaves
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def shown(request: Message, limit: int = 6000) -> str:
    text = text_format.MessageToString(request, as_one_line=True)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _kind(details: str) -> str:
    """The gist of an error message, without the ids and paths that differ between occurrences."""
    return re.sub(r"[0-9a-f]{12,}|/\S+|'[^']*'|\"[^\"]*\"", "_", details)[:120]


class Client:
    """Sends the fuzz's requests to one daemon and checks the properties after each."""

    def __init__(self, daemon: Daemon, world: World, net: Net, collect: bool = False) -> None:
        self.daemon = daemon
        # collect: note each kind of failure once and go on (to see everything a long run finds);
        # otherwise the first failure fails the example (and hypothesis shrinks it).
        self.collect = collect
        self.findings: dict[str, str] = {}
        self.world = world
        self.net = net
        self.sent: Counter[str] = Counter()  # method -> requests sent
        self.codes: Counter[str] = Counter()  # status code name -> count
        self.parents: set[str] = set()  # cgroup parents of pods that ran
        self.slowest: tuple[float, str] = (0.0, "")
        self.seconds: Counter[str] = Counter()  # method -> time spent in its calls

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def call(self, method: str, request: Message) -> tuple[grpc.StatusCode, Any]:
        self.net.make_safe(request)
        descriptor = rq.METHODS[method]
        service = (
            self.daemon.images
            if descriptor.containing_service.name == "ImageService"
            else self.daemon.runtime
        )
        stub = getattr(service, method)
        timeout = EVENTS_TIMEOUT if method == "GetContainerEvents" else CALL_TIMEOUT
        start = time.monotonic()
        code, response, details = grpc.StatusCode.OK, None, ""
        try:
            if descriptor.server_streaming:
                response = list(stub(request, timeout=timeout))
            else:
                response = stub(request, timeout=timeout)
        except grpc.RpcError as err:
            code, details = err.code(), str(err.details())
        elapsed = time.monotonic() - start
        self.seconds[method] += elapsed
        if elapsed > self.slowest[0]:
            self.slowest = (elapsed, f"{method} {code.name} {shown(request, 300)}")
        self.sent[method] += 1
        self.codes[code.name] += 1
        if code in BAD:
            self._fail(
                f"{method} {code.name} {_kind(details)}", f"{method} -> {code.name}: {details}", request
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and method != "GetContainerEvents":
            self._fail(f"{method} hung", f"{method} hung past {timeout:g}s", request)
        self.check_alive(f"after {method} {shown(request, 2000)}")
        self._remember(method, request, code, response)
        return code, response

    def _fail(self, key: str, problem: str, request: Message) -> None:
        text = f"{problem}\nrequest: {shown(request)}"
        if not self.collect:
            raise AssertionError(text)
        self.findings.setdefault(key, text)

    def check_alive(self, context: str) -> None:
        proc = self.daemon.proc
        assert proc is not None and proc.poll() is None, (
            f"the daemon died {context}:\n{self.daemon.log()[-4000:]}"
        )
        status = self.daemon.runtime.Status(pb.StatusRequest(), timeout=30).status
        ready = {c.type: c.status for c in status.conditions}
        assert ready.get("RuntimeReady"), f"RuntimeReady is false {context}: {status}"

    def _remember(self, method: str, request: Any, code: grpc.StatusCode, response: Any) -> None:
        if code != grpc.StatusCode.OK:
            return
        if method == "RunPodSandbox":
            self.world.pods.append(response.pod_sandbox_id)
            self.parents.add(request.config.linux.cgroup_parent or self.world.cgroup_prefix)
        elif method == "CreateContainer":
            self.world.containers.append(response.container_id)
        elif method == "PullImage" and response.image_ref not in self.world.image_ids:
            self.world.image_ids.append(response.image_ref)

    def remove_everything(self) -> None:
        """What kubelet does to a node it drains: stop and remove every pod; containers left without a
        pod (none should be) are removed too. These calls are not fuzz and are not counted."""
        rt = self.daemon.runtime
        for pod in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT)
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=CALL_TIMEOUT)
        for c in rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers:
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=CALL_TIMEOUT)


class CriMachine(RuleBasedStateMachine):
    """One example: a sequence of rules against the shared daemon, ended by removing what it made."""

    client: ClassVar[Client]

    pods = Bundle("pods")
    containers = Bundle("containers")

    def __init__(self) -> None:
        super().__init__()
        world = self.client.world
        # Refs pick among this example's objects first, then the last ones of earlier examples.
        world.pods[:] = world.pods[-10:]
        world.containers[:] = world.containers[-10:]
        self.configs: dict[str, pb.PodSandboxConfig] = {}
        self.pulls = 0

    def _build(self, message: Any, tree: dict[str, Any]) -> Any:
        return rq.build(message.DESCRIPTOR, tree, self.client.world)

    # A pod costs ~50-100 ms to run and as much to remove: a few per example reach every deep path.
    @precondition(lambda self: len(self.configs) < 3)
    @rule(target=pods, tree=rq.friendly_pod())
    def run_pod(self, tree: dict[str, Any]) -> Any:
        config = self._build(pb.PodSandboxConfig, tree)
        code, response = self.client.call("RunPodSandbox", pb.RunPodSandboxRequest(config=config))
        if code != grpc.StatusCode.OK:
            return multiple()
        self.configs[response.pod_sandbox_id] = config
        return response.pod_sandbox_id

    @precondition(lambda self: self.pulls < 2)  # the images stay: an example needs few pulls
    @rule(image=st.builds(v.Ref, st.just("pull"), st.integers(0, 12)))
    def pull(self, image: v.Ref) -> None:
        self.pulls += 1
        name = str(self.client.world.resolve(image))
        self.client.call("PullImage", pb.PullImageRequest(image=pb.ImageSpec(image=name)))

    @rule(target=containers, pod=pods, tree=rq.friendly_container())
    def create(self, pod: str, tree: dict[str, Any]) -> Any:
        config = self._build(pb.ContainerConfig, tree)
        request = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config)
        if pod in self.configs:
            request.sandbox_config.CopyFrom(self.configs[pod])
        code, response = self.client.call("CreateContainer", request)
        return response.container_id if code == grpc.StatusCode.OK else multiple()

    @rule(ctr=containers)
    def start(self, ctr: str) -> None:
        self.client.call("StartContainer", pb.StartContainerRequest(container_id=ctr))

    @rule(ctr=containers, cmd=rq.OVERRIDES["ExecSyncRequest.cmd"](), timeout=st.sampled_from([0, 1, 5]))
    def exec_sync(self, ctr: str, cmd: list[str], timeout: int) -> None:
        self.client.call("ExecSync", pb.ExecSyncRequest(container_id=ctr, cmd=cmd, timeout=timeout))

    @rule(ctr=containers, tree=rq.plan(pb.LinuxContainerResources.DESCRIPTOR))
    def update(self, ctr: str, tree: dict[str, Any]) -> None:
        resources = self._build(pb.LinuxContainerResources, tree)
        request = pb.UpdateContainerResourcesRequest(container_id=ctr, linux=resources)
        self.client.call("UpdateContainerResources", request)

    @rule(ctr=containers, timeout=st.sampled_from([0, 1, 2]))
    def stop(self, ctr: str, timeout: int) -> None:
        self.client.call("StopContainer", pb.StopContainerRequest(container_id=ctr, timeout=timeout))

    @rule(ctr=containers)
    def remove(self, ctr: str) -> None:
        self.client.call("RemoveContainer", pb.RemoveContainerRequest(container_id=ctr))

    @rule(pod=pods)
    def stop_pod(self, pod: str) -> None:
        self.client.call("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod))

    @rule(pod=pods)
    def remove_pod(self, pod: str) -> None:
        self.client.call("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod))

    @rule(calls=st.lists(rq.any_call(), min_size=1, max_size=24))
    def garbage(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        """Generic requests of any RPC; their ids point at this example's objects first."""
        for method, tree in calls:
            request = rq.build(rq.METHODS[method].input_type, tree, self.client.world)
            self.client.call(method, request)

    def teardown(self) -> None:
        self.client.remove_everything()
