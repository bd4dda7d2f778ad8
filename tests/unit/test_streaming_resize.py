"""The resize channel's decoder against what a client may put on it (issue 13): the channel is the
client's to fill, so text that is not a terminal size must be dropped, not kept and parsed again."""

from __future__ import annotations

import asyncio
import json

from cri.streaming.remotecommand import MAX_RESIZE_TEXT, ResizeDecoder


class Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.read_count = 0

    async def read(self) -> bytes:
        self.read_count += 1
        return self.chunks.pop(0) if self.chunks else b""


def sizes(chunks: list[bytes]) -> list[tuple[int, int]]:
    async def run() -> list[tuple[int, int]]:
        decoder = ResizeDecoder(Chunks(chunks))
        out = []
        while (size := await decoder.next()) is not None:
            out.append(size)
            assert len(decoder._buf) <= MAX_RESIZE_TEXT + max(map(len, chunks))
        return out

    return asyncio.run(run())


def size(width: object, height: object) -> bytes:
    return json.dumps({"Width": width, "Height": height}).encode()


def test_sizes_split_across_chunks_and_concatenated_are_read() -> None:
    text = size(80, 24) + b" \n" + size(100, 30)
    assert sizes([text[:7], text[7:20], text[20:]]) == [(80, 24), (100, 30)]


def test_sizes_outside_a_terminal_or_not_integers_are_ignored() -> None:
    bad = [size(0, 1), size(-1, 5), size(70000, 20), size(20, 65536), size("50", 20), size(1.5, 2), b"[1, 2]"]
    assert sizes([*bad, size(65535, 1)]) == [(65535, 1)]


def test_garbage_is_dropped_and_a_size_after_it_still_applies() -> None:
    unterminated = b'{"Width": "' + b"a" * (4 * MAX_RESIZE_TEXT)
    deep = b"[" * (4 * MAX_RESIZE_TEXT)
    digits = b'{"Width": ' + b"9" * 5000 + b', "Height": 1}'
    for garbage in (unterminated, deep, digits, b"\xff" * (2 * MAX_RESIZE_TEXT)):
        assert sizes([garbage, size(50, 20)]) == [(50, 20)], garbage[:20]
