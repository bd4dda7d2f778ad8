"""Requests the CRI fuzz (test_cri_fuzz.py) found answered INTERNAL (or left hanging, or leaking), each
sent here as the fuzz sent it: every one now gets a clear status and leaves nothing behind."""

from __future__ import annotations

import grpc
import pytest

from cri.api import api_pb2 as pb
from tests.daemon import Daemon


def code_of(call: object, request: object, timeout: float = 60) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=timeout)  # type: ignore[operator]
    return err.value.code()


def test_pull_with_non_ascii_auth_is_invalid(daemon: Daemon) -> None:
    """AuthConfig.auth is base64 of user:password; text that is not even ASCII is a bad argument too."""
    request = pb.PullImageRequest(auth=pb.AuthConfig(auth="\u202e"))
    assert code_of(daemon.images.PullImage, request) == grpc.StatusCode.INVALID_ARGUMENT
    request = pb.PullImageRequest(image=pb.ImageSpec(image="127.0.0.1:1/x"), auth=pb.AuthConfig(auth="é"))
    assert code_of(daemon.images.PullImage, request) == grpc.StatusCode.INVALID_ARGUMENT

