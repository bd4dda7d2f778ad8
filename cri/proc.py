"""The one way Calyx runs helper programs (runc, conmon, mount helpers, CNI plugins...).

Every call has a timeout, captures stderr, and a failure raises ``CommandFailed`` quoting the argv and
its stderr, so an error reaching the client says which program failed and why.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping, Sequence

from cri.errors import CommandFailed, DeadlineExceeded
from cri.instruments import observe_command

log = logging.getLogger("cri.proc")


def run(
    argv: Sequence[str],
    timeout: float,
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    check: bool = True,
    object_id: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion; raise CommandFailed on a non-zero exit when ``check``.

    A command still running at ``timeout`` is killed and DeadlineExceeded raised naming it.
    """
    args = [str(a) for a in argv]
    start = time.monotonic()
    try:
        result = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        observe_command(args, env, time.monotonic() - start, None)
        raise DeadlineExceeded(f"{' '.join(args)} did not finish within {timeout:g}s", object_id) from None
    except OSError as exc:
        raise CommandFailed(args, -1, f"cannot run: {exc.strerror}", object_id) from None
    observe_command(args, env, time.monotonic() - start, result.returncode)
    log.debug(
        "ran",
        extra={"argv": args[0], "rc": result.returncode, "duration_ms": (time.monotonic() - start) * 1000},
    )
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, result.stderr.decode(errors="replace"), object_id)
    return result
