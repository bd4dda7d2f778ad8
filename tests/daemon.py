"""Run ``calyx serve`` as a real process for end-to-end tests, and talk to it over gRPC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import tomli_w

from cri.api import api_pb2 as pb
from cri.api import api_pb2_grpc as pb_grpc
from tests.waiting import slowdown

CALYX = [sys.executable, "-m", "cri.cli"]


class Daemon:
    """One calyx daemon with its own socket, state dirs and config file, all under ``base``."""

    def __init__(self, base: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None):
        self.base = base
        self.socket = base / "calyx.sock"
        self.root = base / "lib"
        self.run_root = base / "run"
        self.config_file = base / "calyx.toml"
        self.log_file = base / "calyx.log"
        self.env = dict(os.environ, **(env or {}))
        table: dict[str, Any] = {
            "server": {"socket": str(self.socket), "log_level": "debug"},
            "state": {"root": str(self.root), "run_root": str(self.run_root)},
            "metrics": {"enabled": False},
        }
        for section, values in (config or {}).items():
            table.setdefault(section, {}).update(values)
        self.config_file.write_text(tomli_w.dumps(table))
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    # --- process ------------------------------------------------------------------------------------

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> Daemon:
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*CALYX, "serve", "--config", str(self.config_file), "--config-dir", str(self.base / "calyx.d")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        timeout *= slowdown()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"calyx exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    status = self.runtime.Status(pb.StatusRequest(), timeout=2)
                    if any(c.type == "RuntimeReady" and c.status for c in status.status.conditions):
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"calyx not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not exit. Returns the exit code."""
        timeout *= slowdown()
        self.close_channel()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(60)

    def kill9(self) -> None:
        self.close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # --- gRPC ---------------------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self._channel

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def runtime(self) -> pb_grpc.RuntimeServiceStub:
        return pb_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> pb_grpc.ImageServiceStub:
        return pb_grpc.ImageServiceStub(self.channel)


def calyx_command(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CALYX, *args], capture_output=True, text=True, timeout=timeout)
