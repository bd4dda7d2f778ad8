"""Checks on CRI request strings that Calyx hands to something that interprets them.

A request field may end up in CNI_ARGS (split on ``;`` and ``=``), in a path (``..`` climbs out), in an
argv or environment (a NUL ends the string early, execve refuses it), in a file a container reads line
by line (a newline adds a line), or in an iptables rule. Such a value must be what the field means
and nothing more: it is refused with INVALID_ARGUMENT, naming the field, before anything is made.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re

from calyx_base.errors import InvalidArgument

PATH_MAX = 4096
# A Kubernetes object name (DNS-1123 subdomain), with upper case and '_' as crictl and critest use
# them: never a character CNI_ARGS, a path or a log line would split on.
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def name(field: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field} {value!r} is not a valid name: 1 to 253 letters, digits, '-', '.' or '_', "
            "beginning and ending with a letter or digit"
        )
    return value


def no_nul(field: str, value: str | bytes) -> None:
    if (isinstance(value, str) and "\0" in value) or (isinstance(value, bytes) and b"\0" in value):
        raise InvalidArgument(f"{field} {value!r} contains a NUL character")


def absolute_path(field: str, value: str) -> str:
    """An absolute path with no NUL (it may climb with ``..``: the caller resolves it where it must)."""
    no_nul(field, value)
    if not value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be an absolute path")
    if len(value) > PATH_MAX:
        raise InvalidArgument(f"{field} is longer than {PATH_MAX} bytes")
    return value


def clean_absolute_path(field: str, value: str) -> str:
    """An absolute path in its normal form (no ``..``, ``.`` or empty component; a trailing ``/`` is
    allowed and dropped)."""
    absolute_path(field, value)
    trimmed = value.rstrip("/") or "/"
    if posixpath.normpath(trimmed) != trimmed:
        raise InvalidArgument(f"{field} {value!r} must be a clean absolute path (no '..', '.' or '//')")
    return trimmed


def relative_path(field: str, value: str) -> str:
    """A relative path in its normal form that stays where it is joined: no ``..``, no leading ``/``."""
    no_nul(field, value)
    if value.startswith("/"):
        raise InvalidArgument(f"{field} {value!r} must be a relative path")
    if len(value) > PATH_MAX:
        raise InvalidArgument(f"{field} is longer than {PATH_MAX} bytes")
    if ".." in value.split("/") or posixpath.normpath(value) != value or value == ".":
        raise InvalidArgument(f"{field} {value!r} must be a clean relative path that stays inside its dir")
    return value


def ip_address(field: str, value: str) -> str:
    """An IP address in its normal form. No IPv6 zone (``fe80::1%eth0``): Python accepts any text after
    the ``%``, newlines and spaces included, and Kubernetes never sends one."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"{field} {value!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidArgument(f"{field} {value!r}: an IPv6 zone is not allowed")
    return str(address)
