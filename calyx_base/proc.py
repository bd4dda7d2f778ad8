"""The one way Calyx runs helper programs (runc, conmon, mount helpers, CNI plugins...).

Every call has a timeout, captures stderr, and a failure raises ``CommandFailed`` quoting the argv and
its stderr, so an error reaching the client says which program failed and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from calyx_base.errors import CommandFailed, DeadlineExceeded
from calyx_base.instruments import observe_command

log = logging.getLogger("calyx_base.proc")


def run(
    argv: Sequence[str],
    timeout: float,
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    check: bool = True,
    object_id: str | None = None,
    kill_tree: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion; raise CommandFailed on a non-zero exit when ``check``.

    A command still running at ``timeout`` is killed and DeadlineExceeded raised naming it. With
    ``kill_tree`` it runs in a session of its own and everything it started is killed with it (a
    plugin's helpers would otherwise outlive it, holding what it was setting up).
    """
    args = [str(a) for a in argv]
    start = time.monotonic()
    try:
        result = _run(args, input, timeout, dict(env) if env is not None else None, cwd, kill_tree)
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


def _run(
    args: list[str],
    input: bytes | None,
    timeout: float,
    env: dict[str, str] | None,
    cwd: str | None,
    kill_tree: bool,
) -> subprocess.CompletedProcess[bytes]:
    if not kill_tree:
        return subprocess.run(
            args, input=input, capture_output=True, timeout=timeout, env=env, cwd=cwd, check=False
        )
    with subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    ) as child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(child.pid)
            child.wait()  # not communicate(): a survivor holding the pipes would block it
            raise
    return subprocess.CompletedProcess(args, child.returncode, stdout, stderr)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant (found before anyone dies, while the
    parent links still lead to them; a descendant that left the group is still found this way)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    victims, todo = [], [pid]
    while todo:
        current = todo.pop()
        victims.append(current)
        todo.extend(children.get(current, []))
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGKILL)
