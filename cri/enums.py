"""Names of the CRI enum values a request carries.

proto3 enums are open: a client may send any number in an enum field, and ``Enum.Name`` raises
ValueError for one the API does not define (a RunPodSandbox with ipc = 2147483647 was answered INTERNAL).
"""

from __future__ import annotations

from typing import Any

from calyx_base.errors import InvalidArgument


def shown(enum: Any, value: int) -> str:
    """The value's name, or its number when the API has none (for messages)."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def name_of(enum: Any, value: int, field: str, object_id: str | None = None) -> str:
    """The value's name; INVALID_ARGUMENT naming ``field`` when the API defines none."""
    try:
        return str(enum.Name(value))
    except ValueError:
        known = ", ".join(enum.keys())
        raise InvalidArgument(f"{field} {value} is not one of {known}", object_id) from None
