"""The one place where domain errors (calyx_base/errors.py) become gRPC status codes.

A subclass an area adds for its own errors (an image refused as invalid, a tree that cannot be
removed...) answers as the nearest class of calyx_base/errors.py it derives from.
"""

from __future__ import annotations

import grpc

from calyx_base import errors

STATUS_OF: dict[type[errors.CalyxError], grpc.StatusCode] = {
    errors.CalyxError: grpc.StatusCode.INTERNAL,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.CommandFailed: grpc.StatusCode.INTERNAL,
}


def status_of(exc: errors.CalyxError) -> grpc.StatusCode:
    """The status code of ``exc``: that of the nearest class in its ancestry with a row above."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
