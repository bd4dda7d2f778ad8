"""Domain errors: what went wrong (not found, invalid, conflict, precondition, unavailable...), in
CRI's own words. They know nothing of gRPC: cri/server/status_codes.py alone turns them into status
codes.

Every error names the object it is about (``object_id``) so that logs and messages carry it.
"""

from __future__ import annotations


class CalyxError(Exception):
    """Base of every error Calyx reports to a client."""

    def __init__(self, message: str, object_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.object_id = object_id

    def __str__(self) -> str:
        if self.object_id and self.object_id not in self.message:
            return f"{self.message} (id {self.object_id})"
        return self.message


class InvalidArgument(CalyxError):
    """The request (or what it names) is malformed or out of range."""


class NotFound(CalyxError):
    """The object the request names does not exist."""


class AlreadyExists(CalyxError):
    """An object with that name (or key) exists already."""


class FailedPrecondition(CalyxError):
    """The object is not in a state that allows the request (stopped, in use...)."""


class PermissionDenied(CalyxError):
    """Calyx, or the client, may not do this (a registry refused credentials...)."""


class Unavailable(CalyxError):
    """Not now: Calyx (or something it needs) is not ready; a retry may succeed."""


class DeadlineExceeded(CalyxError):
    """It did not finish in the time it had."""


class ResourceExhausted(CalyxError):
    """A limit was reached (addresses, a size cap...)."""


class Unimplemented(CalyxError):
    """Calyx does not do this."""


class Internal(CalyxError):
    """Something that should not fail did (a syscall, a helper program)."""


class CommandFailed(Internal):
    """A helper program (runc, conmon, a CNI plugin...) failed; the message quotes it and its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, object_id: str | None = None) -> None:
        tail = stderr.strip()[-2000:]
        super().__init__(f"{' '.join(argv)} exited with {returncode}: {tail}", object_id)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
