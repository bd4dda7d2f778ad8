"""Commands run in a running container: ExecSync here, and the argv of a streaming exec (Exec).

Both run the container's own OCI process (env, user, cwd, capabilities, seccomp) with other args,
through ``runc exec --process <spec>``; the spec is written under the container dir
(``<container>/exec/<random>.json``, 0600: its env may come from Secrets) with the pid file beside it,
so that a daemon that dies meanwhile has the process killed at its next start
(cri/streaming/backend.py reap_orphans).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from calyx_base import files
from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri import fields, statedirs
from cri.containers import arglimits, execsync
from cri.containers.exits import ExitTracker
from cri.containers.model import RUNNING, Container
from cri.containers.monitor import ExecResult
from cri.containers.monitors import Monitors
from cri.containers.spec import TTY_TERM


class ContainerExec:
    def __init__(self, exits: ExitTracker, monitors: Monitors) -> None:
        self.exits = exits
        self.monitors = monitors

    def _running(self, container_id: str) -> Container:
        c = self.exits.get(container_id)
        if c.state != RUNNING:
            raise FailedPrecondition(f"container {c.id} is not running", c.id)
        return c

    def exec_process(self, c: Container, cmd: list[str], tty: bool) -> dict[str, Any]:
        """The OCI process of a command run inside ``c``: the container's own process, other args."""
        if not cmd:
            raise InvalidArgument("exec needs a command")
        for arg in cmd:
            fields.no_nul("exec cmd argument", arg)  # execve would cut it short
        spec = json.loads((c.bundle / "config.json").read_text())
        process: dict[str, Any] = dict(spec["process"])
        process["args"] = list(cmd)
        process["terminal"] = tty
        process.pop("oomScoreAdj", None)
        env = list(process.get("env") or [])
        if tty and not any(item.startswith("TERM=") for item in env):
            process["env"] = [*env, f"TERM={TTY_TERM}"]
        arglimits.check(process["args"], list(process.get("env") or []), "the exec's command", c.id)
        return process

    @staticmethod
    def spec_file(c: Container, process: dict[str, Any]) -> Path:
        """Write ``process`` where runc exec reads it: ``<container>/exec/<random>.json``."""
        spec_dir = c.path / statedirs.EXEC_DIR
        spec_dir.mkdir(exist_ok=True, mode=statedirs.PRIVATE_DIR)
        spec_file = spec_dir / f"{secrets.token_hex(8)}.json"
        files.replace_text(spec_file, json.dumps(process))  # its env may come from Secrets: 0600
        return spec_file

    def exec_sync(
        self, container_id: str, cmd: list[str], timeout_s: int, cancel: execsync.Cancel | None = None
    ) -> ExecResult:
        c = self._running(container_id)
        process = self.exec_process(c, cmd, tty=False)
        spec_file = self.spec_file(c, process)
        pid_file = spec_file.with_suffix(".pid")
        try:
            return self.monitors.of(c).exec_sync(c.id, spec_file, pid_file, cmd, timeout_s, cancel)
        finally:
            pid_file.unlink(missing_ok=True)
            spec_file.unlink(missing_ok=True)

    def exec_argv(self, container_id: str, cmd: list[str], tty: bool) -> tuple[list[str], Path]:
        """argv of ``runc exec`` running ``cmd`` in the container, for the streaming server.

        Returns the argv and the process spec file it reads (delete it when done). Run the argv with the
        client's stdio (a pty's slave end as stdin/stdout/stderr when ``tty``); runc relays the
        container's terminal to its own stdio and exits with the command's exit code.
        """
        c = self._running(container_id)
        spec_file = self.spec_file(c, self.exec_process(c, cmd, tty))
        return self.monitors.of(c).exec_argv(c.id, spec_file), spec_file

    def close(self) -> None:
        """The exec reaper (a helper process that outlives no daemon) goes."""
        execsync.REAPER.close()
