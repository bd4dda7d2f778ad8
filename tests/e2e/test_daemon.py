"""The daemon as a real process: serving, readiness, socket ownership, shutdown, runtime info RPCs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.daemon import Daemon


def test_version_names_calyx_and_api_v1(daemon: Daemon) -> None:
    version = daemon.runtime.Version(pb.VersionRequest())
    assert version.runtime_name == "calyx"
    assert version.runtime_api_version == "v1"
    assert version.version == "0.1.0"
    assert version.runtime_version


def test_status_reports_runtime_ready_and_network_condition(daemon: Daemon) -> None:
    status = daemon.runtime.Status(pb.StatusRequest()).status
    conditions = {c.type: c for c in status.conditions}
    assert conditions["RuntimeReady"].status is True
    network = conditions["NetworkReady"]
    if not network.status:
        assert network.reason and network.message


def test_status_verbose_carries_the_effective_config(daemon: Daemon) -> None:
    response = daemon.runtime.Status(pb.StatusRequest(verbose=True))
    config = json.loads(response.info["config"])
    assert config["server"]["socket"] == str(daemon.socket)
    assert config["state"]["root"] == str(daemon.root)
    assert "runc" in [h.name for h in response.runtime_handlers]


def test_status_verbose_never_shows_a_registry_password(daemon_factory) -> None:
    password = "hunter2-registry-password"
    registries = {
        "registry.example:5000": {"username": "ci", "password": password},
        "mirror.example": {"mirrors": ["m.example"]},  # no password: nothing to redact
    }
    daemon = daemon_factory(config={"images": {"registries": registries}})
    response = daemon.runtime.Status(pb.StatusRequest(verbose=True))
    assert password not in str(response)
    config = json.loads(response.info["config"])
    registry = config["images"]["registries"]["registry.example:5000"]
    assert registry["username"] == "ci"
    assert registry["password"] == "(redacted)"
    assert config["images"]["registries"]["mirror.example"]["password"] == ""
    assert password not in daemon.log()


def test_status_lists_the_default_handler_under_the_empty_name_too(daemon_factory) -> None:
    """kubelet (pods without a RuntimeClass) and critest (--runtime-handler, empty by default) look the
    default handler's features up under "": listed there too, as containerd does."""
    handlers = {"runc": {}, "other": {"runtime_path": "runc"}}
    d = daemon_factory({"runtime": {"handlers": handlers, "default_handler": "other"}})
    listed = d.runtime.Status(pb.StatusRequest()).runtime_handlers
    assert [h.name for h in listed] == ["", "other", "runc"]
    by_name = {h.name: h.features for h in listed}
    assert by_name[""] == by_name["other"]
    assert by_name[""].recursive_read_only_mounts is True


def test_status_reports_the_features_calyx_implements(daemon: Daemon) -> None:
    response = daemon.runtime.Status(pb.StatusRequest())
    assert response.features.supplemental_groups_policy is True
    for handler in response.runtime_handlers:
        assert handler.features.recursive_read_only_mounts is True


@pytest.mark.parametrize(("driver", "expected"), [("systemd", pb.SYSTEMD), ("cgroupfs", pb.CGROUPFS)])
def test_runtime_config_reports_the_configured_cgroup_driver(
    daemon_factory, driver: str, expected: int
) -> None:
    d = daemon_factory({"cgroup": {"driver": driver}})
    assert d.runtime.RuntimeConfig(pb.RuntimeConfigRequest()).linux.cgroup_driver == expected


def test_pod_cidr_is_stored_and_survives_a_restart(daemon: Daemon) -> None:
    request = pb.UpdateRuntimeConfigRequest(
        runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.244.3.0/24"))
    )
    daemon.runtime.UpdateRuntimeConfig(request)
    daemon.restart()
    info = daemon.runtime.Status(pb.StatusRequest(verbose=True)).info
    assert info["podCIDR"] == "10.244.3.0/24"


def test_bad_pod_cidr_is_invalid_argument_and_keeps_the_old_one(daemon: Daemon) -> None:
    good = pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.1.0.0/16"))
    daemon.runtime.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=good))
    bad = pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.1.0.0/99"))
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10.1.0.0/99" in err.value.details()
    assert daemon.runtime.Status(pb.StatusRequest(verbose=True)).info["podCIDR"] == "10.1.0.0/16"


def test_socket_has_mode_0660(daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert stat.S_ISSOCK(os.stat(daemon.socket).st_mode)
    assert mode == 0o660


def test_second_instance_on_the_same_socket_is_refused(daemon: Daemon, daemon_factory) -> None:
    second = daemon_factory(start=False)
    second.config_file.write_text(daemon.config_file.read_text())
    second.start(wait_ready=False)
    assert second.proc is not None
    assert second.proc.wait(60) == 1
    assert "another calyx instance" in second.log()
    # the first one is untouched
    assert daemon.runtime.Version(pb.VersionRequest()).runtime_name == "calyx"


def test_stale_socket_file_is_replaced(daemon_factory) -> None:
    d = daemon_factory(start=False)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d.socket))
    stale.close()  # a socket file nobody listens on, as a crashed daemon leaves
    d.start()
    assert d.runtime.Version(pb.VersionRequest()).runtime_name == "calyx"


def test_sigterm_stops_gracefully_and_removes_the_socket(daemon: Daemon) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(60) == 0
    assert not daemon.socket.exists()
    assert "stopped" in daemon.log()


def test_restart_after_kill9_serves_again(daemon: Daemon) -> None:
    daemon.kill9()
    assert daemon.socket.exists()  # left behind by the killed process
    daemon.start()
    assert daemon.runtime.Version(pb.VersionRequest()).runtime_name == "calyx"


# The one RPC Calyx answers UNIMPLEMENTED on purpose (checkpointing needs CRIU; README's CRI table).
NOT_IMPLEMENTED = {"CheckpointContainer"}


def test_every_rpc_of_the_proto_is_implemented_but_checkpoint(daemon: Daemon) -> None:
    """Every method of both services, enumerated from the proto (a new RPC is covered by itself), is
    called with an empty request: each may refuse it, none may be UNIMPLEMENTED but CheckpointContainer,
    and the daemon keeps serving."""
    called: dict[str, grpc.StatusCode] = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            request = getattr(pb, method.input_type.name)()
            response = getattr(pb, method.output_type.name)
            kind = daemon.channel.unary_stream if method.server_streaming else daemon.channel.unary_unary
            call = kind(path, request_serializer=type(request).SerializeToString,
                        response_deserializer=response.FromString)  # fmt: skip
            code = grpc.StatusCode.OK
            try:
                result = call(request, timeout=5)
                if method.server_streaming:
                    next(iter(result), None)  # events and metrics streams go on: the first message will do
                    result.cancel()
            except grpc.RpcError as err:
                code = err.code()
            called[method.name] = code
    assert {"RunPodSandbox", "CreateContainer", "PullImage", "ImageFsInfo"} <= called.keys()
    unimplemented = {name for name, code in called.items() if code == grpc.StatusCode.UNIMPLEMENTED}
    assert unimplemented == NOT_IMPLEMENTED, called
    assert daemon.runtime.Version(pb.VersionRequest()).runtime_name == "calyx"
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_readiness_is_notified_to_systemd_after_recovery(daemon_factory, short_tmp) -> None:
    """With NOTIFY_SOCKET set (as by systemd Type=notify): READY=1 once serving, STOPPING=1 at stop."""
    notify_path = short_tmp / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    try:
        d = daemon_factory(env={"NOTIFY_SOCKET": str(notify_path)})
        assert listener.recv(256) == b"READY=1"
        # by then the daemon answers and says it is ready
        conditions = {c.type: c.status for c in d.runtime.Status(pb.StatusRequest()).status.conditions}
        assert conditions["RuntimeReady"] is True
        d.stop()
        assert listener.recv(256) == b"STOPPING=1"
    finally:
        listener.close()


def test_garbage_requests_get_a_status_and_do_not_hurt_the_daemon(daemon: Daemon) -> None:
    """Undecodable request bytes for every method: each gets an error status, the daemon keeps serving."""
    raw = daemon.channel
    payloads = [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x12" * 64]
    for service in ("RuntimeService", "ImageService"):
        for method in pb.DESCRIPTOR.services_by_name[service].methods:
            path = f"/runtime.v1.{service}/{method.name}"
            for payload in payloads:
                if method.server_streaming:
                    call = raw.unary_stream(path, request_serializer=None, response_deserializer=None)
                    with pytest.raises(grpc.RpcError) as err:
                        list(call(payload, timeout=60))
                else:
                    call = raw.unary_unary(path, request_serializer=None, response_deserializer=None)
                    with pytest.raises(grpc.RpcError) as err:
                        call(payload, timeout=60)
                assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert daemon.runtime.Version(pb.VersionRequest()).runtime_name == "calyx"
    assert daemon.proc is not None and daemon.proc.poll() is None
