"""Exec and attach sessions, independent of the wire protocol (SPDY streams or WebSocket channels).

A session gets ``Channels`` (what the client opened) and moves bytes between them and a process
(exec) or conmon's attach socket (attach), applies resize events, and reports the outcome on the error
channel: for v4/v5 clients the Kubernetes Status JSON (``Success``, or ``Failure`` with reason
``NonZeroExitCode`` and the code as an ``ExitCode`` cause), for older ones the failure text alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cri.streaming.process import ExecProcess, read_fd, write_fd

log = logging.getLogger("cri.streaming.remotecommand")

STDOUT_PIPE = 2  # conmon's attach socket: the first byte of every packet names the pipe (1 is stdin)
STDERR_PIPE = 3
ATTACH_PACKET = 32 * 1024 + 1


class Source(Protocol):
    async def read(self) -> bytes: ...


class Sink(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


Status = dict[str, Any]


@dataclass
class Channels:
    stdin: Source | None
    stdout: Sink | None
    stderr: Sink | None
    resize: Source | None
    gone: asyncio.Event  # set when the client's connection is lost
    tty: bool


# --- status --------------------------------------------------------------------------------------------


def status_success() -> Status:
    return {"metadata": {}, "status": "Success"}


def status_exit_code(code: int, cmd: list[str]) -> Status:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command [{' '.join(cmd)}], "
        f"exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def status_error(message: str) -> Status:
    return {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def encode_status(status: Status, json_status: bool) -> bytes:
    """What the error channel carries: v4+ the JSON, older protocols only a failure's message."""
    if json_status:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


# --- resize events -------------------------------------------------------------------------------------


MAX_RESIZE_TEXT = 4096  # a size event is ~30 bytes; text that has not parsed by this length never will
MAX_TERMINAL_SIDE = 0xFFFF  # a terminal's width and height are 16-bit (struct winsize, kubelet's uint16)


class ResizeDecoder:
    """The resize channel's concatenated JSON objects ``{"Width":..,"Height":..}``, one size at a time.

    The channel is the client's to fill: text that is not a size (garbage, a string that never ends,
    deep nesting, numbers out of range) is dropped once it exceeds ``MAX_RESIZE_TEXT``, never kept or
    parsed again and again, and the channel is still read, so valid sizes after it apply.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._decoder = json.JSONDecoder()
        self._buf = ""

    async def next(self) -> tuple[int, int] | None:
        """The next valid (width, height); None once the channel ends."""
        while True:
            self._buf = self._buf.lstrip()
            if self._buf:
                try:
                    obj, end = self._decoder.raw_decode(self._buf)
                except (ValueError, RecursionError):  # JSONDecodeError, or int() refusing 5000 digits
                    obj, end = None, -1
                if end >= 0:
                    self._buf = self._buf[end:]
                    size = _terminal_size(obj)
                    if size is not None:
                        return size
                    continue
                if len(self._buf) > MAX_RESIZE_TEXT:
                    log.info("dropping resize text that is not a size", extra={"bytes": len(self._buf)})
                    self._buf = ""
            chunk = await self.source.read()
            if not chunk:
                return None
            self._buf += chunk.decode(errors="replace")


def _terminal_size(obj: object) -> tuple[int, int] | None:
    if not isinstance(obj, dict):
        return None
    width, height = obj.get("Width"), obj.get("Height")
    if not (isinstance(width, int) and isinstance(height, int)):
        return None
    if 0 < width <= MAX_TERMINAL_SIDE and 0 < height <= MAX_TERMINAL_SIDE:
        return width, height
    return None


async def resize_events(decoder: ResizeDecoder, apply: Callable[[int, int], None]) -> None:
    while (size := await decoder.next()) is not None:
        apply(*size)


FIRST_RESIZE_WAIT = 1.0  # clients send the terminal's size right after the streams open


async def first_size(decoder: ResizeDecoder) -> tuple[int, int] | None:
    """The client's initial terminal size, so the exec starts with it (no window of a 0x0 terminal)."""
    try:
        return await asyncio.wait_for(decoder.next(), FIRST_RESIZE_WAIT)
    except TimeoutError:
        return None


# --- exec ----------------------------------------------------------------------------------------------


async def _pump_out(fd: int, sink: Sink) -> None:
    try:
        while True:
            data = await read_fd(fd)
            if not data:
                break
            await sink.write(data)
    except (ConnectionError, OSError) as exc:
        log.debug("output pump ended", extra={"error": str(exc)})
    finally:
        with contextlib.suppress(Exception):
            await sink.close()


async def _pump_in(source: Source, proc: ExecProcess) -> None:
    try:
        while True:
            data = await source.read()
            if not data:
                break
            if proc.stdin_fd is None:
                break
            await write_fd(proc.stdin_fd, data)
    except (ConnectionError, OSError):
        pass
    finally:
        proc.close_stdin()


async def _spawned_unless_gone(spawning: Awaitable[ExecProcess], gone: asyncio.Event) -> ExecProcess | None:
    """The spawned process, or None when the client left before the spawn returned: the spawn is then
    cancelled, and whoever runs it ends what it started (``Offload`` discards an abandoned result)."""
    spawn = asyncio.ensure_future(spawning)
    left = asyncio.create_task(gone.wait())
    try:
        await asyncio.wait([spawn, left], return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not spawn.done():
            spawn.cancel()
        await asyncio.gather(spawn, left, return_exceptions=True)
    return None if spawn.cancelled() else spawn.result()


async def run_exec(
    spawn: Callable[[tuple[int, int] | None], Awaitable[ExecProcess]], cmd: list[str], ch: Channels
) -> Status:
    """Run the process to its end (or the client's departure) and return the status to report."""
    decoder = ResizeDecoder(ch.resize) if ch.resize is not None else None
    size = await first_size(decoder) if decoder is not None and ch.tty else None
    try:
        started = await _spawned_unless_gone(spawn(size), ch.gone)
    except Exception as exc:
        log.warning("exec failed to start", extra={"error": str(exc)})
        return status_error(f"error executing command in container: {exc}")
    if started is None:
        log.info("client went away while its exec was starting")
        return status_error("client disconnected")
    proc = started
    tasks: list[asyncio.Task[None]] = []
    outputs: list[asyncio.Task[None]] = []
    exited = asyncio.create_task(proc.wait())
    gone = asyncio.create_task(ch.gone.wait())
    try:
        if proc.stdout_fd is not None and ch.stdout is not None:
            outputs.append(asyncio.create_task(_pump_out(proc.stdout_fd, ch.stdout)))
        if proc.stderr_fd is not None and ch.stderr is not None:
            outputs.append(asyncio.create_task(_pump_out(proc.stderr_fd, ch.stderr)))
        if ch.stdin is not None and proc.stdin_fd is not None:
            tasks.append(asyncio.create_task(_pump_in(ch.stdin, proc)))
        if decoder is not None:
            tasks.append(asyncio.create_task(resize_events(decoder, proc.resize)))
        await asyncio.wait([exited, gone], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            log.info("client went away, killing exec process", extra={"pid": proc.pid})
            await proc.terminate()
            await exited
            return status_error("client disconnected")
        code = exited.result()
        if outputs:
            # The output ends at EOF; a client that leaves meanwhile ends it too.
            drained: asyncio.Future[Any] = asyncio.gather(*outputs)
            await asyncio.wait([drained, gone], return_when=asyncio.FIRST_COMPLETED)
        return status_success() if code == 0 else status_exit_code(code, cmd)
    finally:
        gone.cancel()
        for task in tasks + outputs:
            task.cancel()
        await asyncio.gather(gone, *tasks, *outputs, return_exceptions=True)
        if not exited.done():
            await asyncio.shield(proc.terminate())
            await asyncio.wait([exited], timeout=10)
        if not exited.done():
            exited.cancel()
        proc.close()


# --- attach --------------------------------------------------------------------------------------------


@dataclass
class AttachTarget:
    """Where conmon serves the container's stdio, and how to resize its terminal."""

    socket_path: str
    resize: Callable[[int, int], None]
    tty: bool


async def run_attach(target: AttachTarget, ch: Channels) -> Status:
    """Relay between the client and conmon's attach socket until either side ends."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    dir_fd = -1
    path = target.socket_path
    if len(path.encode()) > 100:  # sun_path holds 108 bytes: go through the directory's fd
        dir_fd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
        path = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
    try:
        await loop.sock_connect(sock, path)
    except OSError as exc:
        sock.close()
        return status_error(f"cannot attach to the container: {exc.strerror}")
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    tasks: list[asyncio.Task[None]] = []

    async def from_conmon() -> None:
        while True:
            packet = await loop.sock_recv(sock, ATTACH_PACKET)
            if not packet:
                return
            pipe, payload = packet[0], packet[1:]
            sink = ch.stdout if pipe == STDOUT_PIPE else ch.stderr if pipe == STDERR_PIPE else None
            if sink is not None and payload:
                with contextlib.suppress(ConnectionError):
                    await sink.write(payload)

    async def to_conmon(source: Source) -> None:
        while True:
            data = await source.read()
            if not data:
                break
            for i in range(0, len(data), ATTACH_PACKET - 1):
                await loop.sock_sendall(sock, data[i : i + ATTACH_PACKET - 1])
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # conmon closes the container's stdin (if stdin_once)

    try:
        output = asyncio.create_task(from_conmon())
        if ch.stdin is not None:
            tasks.append(asyncio.create_task(to_conmon(ch.stdin)))
        if ch.resize is not None:
            tasks.append(asyncio.create_task(resize_events(ResizeDecoder(ch.resize), target.resize)))
        gone = asyncio.create_task(ch.gone.wait())
        await asyncio.wait([output, gone], return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if output.done() and output.exception() is not None:
            return status_error(f"attach failed: {output.exception()}")
        for sink in (ch.stdout, ch.stderr):
            if sink is not None:
                with contextlib.suppress(Exception):
                    await sink.close()
        output.cancel()
        return status_success()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()


Runner = Callable[[Channels], Awaitable[Status]]
