"""One Monitor (conmon + the OCI runtime of a runtime handler) per configured handler, made on first use."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from calyx_base.errors import InvalidArgument
from cri.config import RuntimeConfig
from cri.containers.model import Container
from cri.containers.monitor import Monitor


class Monitors:
    def __init__(self, handlers: RuntimeConfig, run_dir: Path, systemd_cgroup: bool) -> None:
        self.handlers = handlers
        self.run_dir = run_dir
        self.exit_dir = run_dir / "exits"
        self.systemd_cgroup = systemd_cgroup
        self._monitors: dict[str, Monitor] = {}
        self._lock = threading.Lock()

    def get(self, handler: str) -> Monitor:
        """The monitor of runtime handler ``handler``; InvalidArgument if it is not configured."""
        with self._lock:
            if handler not in self._monitors:
                if handler not in self.handlers.handlers:
                    raise InvalidArgument(f"unknown runtime handler {handler!r}")
                conf = self.handlers.handlers[handler]
                root = Path(conf.runtime_root) if conf.runtime_root else self.run_dir / handler
                runtime_path = shutil.which(conf.runtime_path) or conf.runtime_path
                conmon = shutil.which(self.handlers.conmon_path) or self.handlers.conmon_path
                self._monitors[handler] = Monitor(
                    conmon,
                    runtime_path,
                    root,
                    self.exit_dir,
                    self.run_dir / "sockets",
                    systemd_cgroup=self.systemd_cgroup,
                )
            return self._monitors[handler]

    def of(self, c: Container) -> Monitor:
        return self.get(c.handler)

    def every(self) -> list[Monitor]:
        """The monitor of every configured handler (recovery looks at all their state dirs)."""
        return [self.get(h) for h in self.handlers.handlers]
