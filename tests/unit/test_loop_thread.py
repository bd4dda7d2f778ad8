"""calyx_base.loop_thread against real asyncio, threads and sockets: a failed start raises the setup's own
error and leaves nothing, stop runs the shutdown on the loop, joins the thread and closes the loop, and
neither leaves a thread (by name and kernel thread id) or a descriptor."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from calyx_base.loop_thread import LoopThread


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def thread_alive(name: str, native_id: int | None) -> bool:
    """By name, and by the kernel's thread id (not reused soon, unlike ``ident``)."""
    return any(t.name == name or t.native_id == native_id for t in threading.enumerate())


@pytest.fixture
def name() -> str:
    return f"loopthread-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class Seen:
    """What the setup saw on the loop's thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ident: int | None = None
        self.native_id: int | None = None
        self.thread_name = ""
        self.shutdowns = 0

    def note(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.ident = threading.get_ident()
        self.native_id = threading.get_native_id()
        self.thread_name = threading.current_thread().name


def test_a_failed_setup_raises_its_error_and_leaves_no_thread_loop_or_fd(name: str, busy_port: int) -> None:
    seen = Seen()

    async def setup() -> None:
        seen.note()
        await asyncio.start_server(lambda r, w: None, "127.0.0.1", busy_port)

    loop_thread = LoopThread(name)
    before = open_fds()
    with pytest.raises(OSError) as caught:
        loop_thread.start(setup)
    assert caught.value.errno == 98  # EADDRINUSE, the bind's own error
    assert seen.thread_name == name and seen.ident != threading.get_ident()
    assert seen.loop is not None and seen.loop.is_closed()
    assert not thread_alive(name, seen.native_id)
    assert open_fds() == before  # the loop's epoll and self-pipe are closed too
    assert not loop_thread.running

    async def shutdown() -> None:
        seen.shutdowns += 1

    loop_thread.stop(shutdown, 1)  # nothing to stop: the shutdown is not called
    assert seen.shutdowns == 0


def test_start_serves_until_stop_which_runs_shutdown_joins_and_closes(name: str) -> None:
    seen = Seen()
    before = open_fds()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def setup() -> asyncio.Server:
        seen.note()
        return await asyncio.start_server(echo, "127.0.0.1", 0)

    async def shutdown() -> None:
        assert threading.get_ident() == seen.ident
        seen.shutdowns += 1
        server.close()
        await server.wait_closed()

    loop_thread = LoopThread(name)
    server = loop_thread.start(setup)
    assert loop_thread.running and thread_alive(name, seen.native_id)
    with pytest.raises(RuntimeError, match="already running"):
        loop_thread.start(setup)

    with socket.create_connection(server.sockets[0].getsockname()[:2], timeout=30) as client:
        client.sendall(b"ping\n")
        assert client.makefile("rb").readline() == b"ping\n"

    async def where() -> int:
        return threading.get_ident()

    assert loop_thread.call(where(), 30) == seen.ident

    loop_thread.stop(shutdown, 30)
    assert seen.shutdowns == 1
    assert seen.loop is not None and seen.loop.is_closed()
    assert not thread_alive(name, seen.native_id)
    assert open_fds() == before
    assert not loop_thread.running
    loop_thread.stop(shutdown, 30)  # a second stop is a no-op
    assert seen.shutdowns == 1


def test_call_raises_the_coroutines_error_and_refuses_when_not_running(name: str) -> None:
    loop_thread = LoopThread(name)

    async def nothing() -> None:
        pass

    async def broken() -> None:
        raise ValueError("on the loop")

    with pytest.raises(RuntimeError, match="not running"):
        loop_thread.call(nothing(), 1)
    loop_thread.start(nothing)
    try:
        with pytest.raises(ValueError, match="on the loop"):
            loop_thread.call(broken(), 30)
    finally:
        loop_thread.stop(nothing, 30)


def test_a_failing_shutdown_still_stops_and_the_loop_can_start_again(name: str) -> None:
    seen = Seen()

    async def setup() -> None:
        seen.note()

    async def failing() -> None:
        raise RuntimeError("shutdown failed")

    loop_thread = LoopThread(name)
    loop_thread.start(setup)
    first_loop, first_tid = seen.loop, seen.native_id
    loop_thread.stop(failing, 30)
    assert first_loop is not None and first_loop.is_closed()
    assert not thread_alive(name, first_tid)

    loop_thread.start(setup)
    second_loop = seen.loop
    assert second_loop is not None and second_loop is not first_loop and not second_loop.is_closed()
    loop_thread.stop(setup, 30)
    assert second_loop.is_closed()
    assert not thread_alive(name, seen.native_id)
