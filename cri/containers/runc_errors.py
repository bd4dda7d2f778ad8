"""Which ``runc create`` failures the request caused, told from runc's message (runc 1.1).

runc checks much of a container's config only when it builds the container: the program to run, the
mounts, the working directory, the resource values the kernel takes, the seccomp profile. A failure
there is the request's (INVALID_ARGUMENT, with runc's words); any other failure stays INTERNAL.
"""

from __future__ import annotations

import re

# (what in runc's message shows it, what the client is told went wrong)
REQUEST_FAULTS = [
    # exec.LookPath: the program is missing from the image, or is not something it can run
    (re.compile(r"unable to start container process: exec: "), "the container's command cannot be run"),
    (
        re.compile(r"error setting cgroup config for procHooks process: "),
        "the kernel refused the container's resources",
    ),
    (re.compile(r"error mounting .* to rootfs at "), "a mount of the container cannot be made"),
    (re.compile(r"error reopening /dev/null inside container"), "a mount hides the container's /dev/null"),
    (
        re.compile(r"error during container init: (mkdir|chdir to cwd)"),
        "the working directory cannot be made",
    ),
    (re.compile(r"is not a valid (action|arch|operator) for seccomp"), "the seccomp profile is not valid"),
]


# ``runc start`` of a container no longer in runc's created state: its init has died since ``runc
# create`` (killed, or stopped by its own seccomp profile) before conmon recorded the exit, or it was
# started behind Calyx's back. (what runc says, what the client is told)
_NOT_STARTABLE = [
    (re.compile(r"cannot start a container that has stopped"), "exited before it was started"),
    (
        re.compile(r"cannot start an already running container"),
        "is no longer waiting to be started (runc finds it running)",
    ),
]


def not_startable(message: str) -> str | None:
    """Why runc's ``message`` says the container cannot be started (the container's state, not a
    failure of the runtime), else None."""
    for pattern, why in _NOT_STARTABLE:
        if pattern.search(message):
            return why
    return None


def request_fault(message: str) -> str | None:
    """What the client is told when runc's ``message`` shows a fault of the request, else None."""
    for pattern, what in REQUEST_FAULTS:
        if pattern.search(message):
            return what
    return None
