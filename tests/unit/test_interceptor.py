"""The interceptor's mapping of domain errors to gRPC codes, and the structured log format."""

from __future__ import annotations

import logging

import grpc
import pytest

from calyx_base import errors
from calyx_base.log import KeyValueFormatter
from cri.api import api_pb2 as pb
from cri.server.interceptor import Interceptor, request_ids
from cri.server.status_codes import STATUS_OF, status_of


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no pod", "abc"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("dup"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("state"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unavailable("later"), grpc.StatusCode.UNAVAILABLE),
        (NotImplementedError(), grpc.StatusCode.UNIMPLEMENTED),
        (KeyError("surprise"), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_codes(exc: Exception, code: grpc.StatusCode) -> None:
    got, detail = Interceptor._status("RunPodSandbox", exc, pb.RunPodSandboxRequest())
    assert got == code
    assert detail


def test_error_messages_carry_the_object_id() -> None:
    _, detail = Interceptor._status("StopContainer", errors.NotFound("container not found", "c0ffee"), None)
    assert "c0ffee" in detail
    _, detail = Interceptor._status("X", errors.NotFound("container c0ffee not found", "c0ffee"), None)
    assert detail == "container c0ffee not found"


def test_command_failed_quotes_argv_and_stderr() -> None:
    exc = errors.CommandFailed(["runc", "start", "abc"], 1, "container not created\n", "abc")
    assert "runc start abc exited with 1: container not created" in str(exc)


def test_request_ids_pick_the_ids_a_request_is_about() -> None:
    assert request_ids(pb.StopContainerRequest(container_id="c1")) == {"container_id": "c1"}
    assert request_ids(pb.CreateContainerRequest(pod_sandbox_id="p1")) == {"pod_sandbox_id": "p1"}
    assert request_ids(pb.PullImageRequest(image=pb.ImageSpec(image="busybox"))) == {"image": "busybox"}
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="web"))
    assert request_ids(pb.RunPodSandboxRequest(config=config)) == {"object_name": "web"}


def test_log_lines_are_key_value_with_extras() -> None:
    record = logging.LogRecord("cri.pods", logging.INFO, __file__, 1, "pod started", (), None)
    record.pod_id = "abc"
    record.duration_ms = 12.34567
    record.reason = "two words"
    line = KeyValueFormatter().format(record)
    assert "level=info logger=cri.pods" in line
    assert 'msg="pod started"' in line
    assert "pod_id=abc" in line and "duration_ms=12.346" in line
    assert 'reason="two words"' in line


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def test_each_method_is_wrapped_once_and_unknown_names_are_not_kept() -> None:
    """Wrapping is done once per known method; a made-up method name leaves nothing behind."""
    interceptor = Interceptor(lambda: True)
    made: list[str] = []

    def continuation(details: _Details) -> grpc.RpcMethodHandler | None:
        made.append(details.method)
        if details.method.endswith("/Version"):
            return grpc.unary_unary_rpc_method_handler(lambda request, context: pb.VersionResponse())
        return None

    first = interceptor.intercept_service(continuation, _Details("/runtime.v1.RuntimeService/Version"))
    again = interceptor.intercept_service(continuation, _Details("/runtime.v1.RuntimeService/Version"))
    assert first is not None and first is again
    assert made == ["/runtime.v1.RuntimeService/Version"]
    for n in range(3):
        assert interceptor.intercept_service(continuation, _Details(f"/x.Made/Up{n}")) is None
    assert list(interceptor._handlers) == ["/runtime.v1.RuntimeService/Version"]
    assert first.unary_unary is not None
    assert first.unary_unary(pb.VersionRequest(), None) == pb.VersionResponse()


def test_every_domain_error_class_has_a_status_code() -> None:
    """calyx_base/errors.py knows nothing of gRPC; each of its classes has its own row in status_codes.py."""
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.CalyxError)]
    assert len(classes) >= 12
    missing = [c.__name__ for c in classes if c not in STATUS_OF]
    assert not missing


def test_an_areas_own_error_answers_as_the_class_it_derives_from() -> None:
    from cri.images.validate import InvalidImage
    from sandbox.trees import RemoveFailed

    assert status_of(InvalidImage("bad config", "sha256:ab")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(RemoveFailed("cannot remove", "/x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(errors.CommandFailed(["runc"], 1, "")) == grpc.StatusCode.INTERNAL
