"""Domain errors. Servicers and domain code raise these; cri/server/interceptor.py maps them to gRPC codes.

Every error names the object it is about (``object_id``) so that logs and messages carry it.
"""

from __future__ import annotations

import grpc


class CalyxError(Exception):
    """Base of every error Calyx reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, object_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.object_id = object_id

    def __str__(self) -> str:
        if self.object_id and self.object_id not in self.message:
            return f"{self.message} (id {self.object_id})"
        return self.message


class InvalidArgument(CalyxError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CalyxError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CalyxError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CalyxError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(CalyxError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(CalyxError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CalyxError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(CalyxError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(CalyxError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(CalyxError):
    code = grpc.StatusCode.INTERNAL


class CommandFailed(Internal):
    """A helper program (runc, conmon, a CNI plugin...) failed; the message quotes it and its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, object_id: str | None = None) -> None:
        tail = stderr.strip()[-2000:]
        super().__init__(f"{' '.join(argv)} exited with {returncode}: {tail}", object_id)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
