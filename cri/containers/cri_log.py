"""Reading the CRI log format conmon writes: ``<RFC3339Nano> <stdout|stderr> <P|F> <text>``.

A ``P`` line is a partial line (the rest follows in later records); ``F`` ends a line, so a newline is
added after its text.
"""

from __future__ import annotations

from pathlib import Path


def read_streams(path: Path, limit: int) -> tuple[bytes, bytes]:
    """stdout and stderr recorded in ``path``, together at most ``limit`` bytes (the rest is dropped).

    The cap is on both together so that a reply carrying them stays within one gRPC message.
    """
    out = bytearray()
    err = bytearray()
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return b"", b""
    with handle:
        for record in handle:
            parts = record.split(b" ", 3)
            if len(parts) < 3:
                continue
            stream, tag = parts[1], parts[2].rstrip(b"\n")
            text = parts[3] if len(parts) > 3 else b""
            if text.endswith(b"\n"):
                text = text[:-1]
            if tag == b"F":
                text += b"\n"
            target = out if stream == b"stdout" else err
            room = limit - len(out) - len(err)
            if room > 0:
                target += text[:room]
    return bytes(out), bytes(err)
