"""Real processes with known resource use, for checking the readers against the kernel.

A workload starts blocked on its stdin, so the test can move it into a cgroup before it does anything;
each line sent then runs one command (burn CPU seconds of its own CPU time, hold memory) and is
acknowledged with a line on stdout. The CPU burn counts the process's own CPU time (not wall time),
so the expected cgroup usage does not depend on how busy the shared machine is.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import sys, time
held = []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "burn":
        end = time.process_time() + float(arg)
        while time.process_time() < end:  # a syscall: checked every 200k iterations only
            for _ in range(200_000):
                pass
    elif cmd == "hold":
        held.append(b"x" * int(arg))  # every page written, so resident
    print("done", flush=True)
"""


class Workload:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, command: str) -> None:
        """Send one command and wait for its acknowledgement."""
        self.send(command)
        self.wait_done(command)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait_done(self, command: str = "") -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "done":
            raise RuntimeError(f"workload {self.pid} failed on {command!r}: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
