"""A small client of systemd's manager over the system D-Bus (jeepney), as the systemd driver needs it.

Only what the driver uses: start a transient unit and wait for its job, stop a unit and wait, change unit
properties at runtime, read a unit property. One connection, used under a lock (the daemon's gRPC
threads share it); it is reopened once when the bus went away (dbus or systemd restarted).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from jeepney import DBusAddress, MatchRule, Message, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from calyx_base.errors import DeadlineExceeded, Internal, Unavailable

log = logging.getLogger("sandbox.cgroups.dbus")

SYSTEMD = DBusAddress(
    "/org/freedesktop/systemd1",
    bus_name="org.freedesktop.systemd1",
    interface="org.freedesktop.systemd1.Manager",
)
PROPERTIES = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
NOT_LOADED = "org.freedesktop.systemd1.LoadFailed"

Property = tuple[str, tuple[str, Any]]  # (name, (D-Bus signature, value)), a StartTransientUnit "a(sv)" item
T = TypeVar("T")


class SystemdError(Internal):
    """systemd refused a call; ``name`` is the D-Bus error name (e.g. org.freedesktop.systemd1.NoSuchUnit)."""

    def __init__(self, method: str, unit: str, name: str, detail: str) -> None:
        super().__init__(f"systemd {method} {unit}: {name}: {detail}", unit)
        self.name = name


class JobFailed(Internal):
    """A job systemd ran for us ended with a result other than "done"."""


class Systemd:
    """The systemd manager on the system bus (DBUS_SYSTEM_BUS_ADDRESS, else the well-known socket)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: DBusConnection | None = None

    # --- connection -------------------------------------------------------------------------------------

    def _connect(self) -> DBusConnection:
        if self._conn is None:
            try:
                conn = open_dbus_connection(bus="SYSTEM")
            except (OSError, TimeoutError) as exc:
                raise Unavailable(f"cannot reach the system D-Bus to talk to systemd: {exc}") from None
            # systemd emits JobRemoved only to subscribers; the bus delivers it only on a match.
            match = MatchRule(
                type="signal", interface=SYSTEMD.interface, member="JobRemoved", path=SYSTEMD.object_path
            )
            unwrap_msg(conn.send_and_get_reply(message_bus.AddMatch(match), timeout=self.timeout))
            unwrap_msg(conn.send_and_get_reply(new_method_call(SYSTEMD, "Subscribe"), timeout=self.timeout))
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _locked(self, work: Callable[[DBusConnection], T]) -> T:
        """Run ``work`` on the connection; reconnect once if the bus connection broke."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connect()
                try:
                    return work(conn)
                except (ConnectionError, BrokenPipeError, EOFError) as exc:
                    self._conn = None
                    conn.close()
                    if attempt == 2:
                        raise Unavailable(f"lost the D-Bus connection to systemd: {exc}") from None
                    log.warning("D-Bus connection lost, reconnecting", extra={"error": str(exc)})
        raise AssertionError("unreachable")

    @staticmethod
    def _reply(conn: DBusConnection, msg: Message, method: str, unit: str, timeout: float) -> tuple[Any, ...]:
        try:
            reply = conn.send_and_get_reply(msg, timeout=timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"systemd {method} {unit}: no reply in {timeout:.0f}s", unit) from None
        try:
            return tuple(unwrap_msg(reply))
        except DBusErrorResponse as exc:
            detail = exc.data[0] if exc.data else ""
            raise SystemdError(method, unit, str(exc.name), str(detail)) from None

    def _job(
        self, conn: DBusConnection, method: str, unit: str, signature: str, args: tuple[Any, ...]
    ) -> str:
        """Call a method that queues a job and wait until the job is removed; return its result."""
        rule = MatchRule(type="signal", interface=SYSTEMD.interface, member="JobRemoved")
        deadline = time.monotonic() + self.timeout
        with conn.filter(rule, queue=deque()) as removed:
            (job,) = self._reply(
                conn, new_method_call(SYSTEMD, method, signature, args), method, unit, self.timeout
            )
            while True:
                while removed:  # a JobRemoved may have come in before the reply
                    _id, path, _unit, result = removed.popleft().body
                    if path == job:
                        return str(result)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded(f"systemd {method} {unit}: job {job} not finished in time", unit)
                try:
                    removed.appendleft(conn.recv_until_filtered(removed, timeout=remaining))
                except TimeoutError:
                    continue

    # --- manager methods --------------------------------------------------------------------------------

    def start_transient_unit(self, unit: str, properties: list[Property], mode: str = "fail") -> None:
        """StartTransientUnit and wait for its job; JobFailed unless the result is "done"."""
        result = self._locked(
            lambda conn: self._job(
                conn, "StartTransientUnit", unit, "ssa(sv)a(sa(sv))", (unit, mode, properties, [])
            )
        )
        if result != "done":
            raise JobFailed(f"systemd could not start {unit}: job result {result}", unit)

    def start_unit(self, unit: str, mode: str = "replace") -> None:
        result = self._locked(lambda conn: self._job(conn, "StartUnit", unit, "ss", (unit, mode)))
        if result != "done":
            raise JobFailed(f"systemd could not start {unit}: job result {result}", unit)

    def stop_unit(self, unit: str, mode: str = "replace") -> bool:
        """StopUnit and wait; False if the unit was not loaded (nothing to stop)."""
        try:
            result = self._locked(lambda conn: self._job(conn, "StopUnit", unit, "ss", (unit, mode)))
        except SystemdError as exc:
            if exc.name == NO_SUCH_UNIT:
                return False
            raise
        if result not in ("done", "skipped"):
            raise JobFailed(f"systemd could not stop {unit}: job result {result}", unit)
        return True

    def kill_unit(self, unit: str, signal_number: int, whom: str = "all") -> bool:
        """KillUnit: signal the unit's processes at once (no stop timeout); False if not loaded."""
        try:
            self._locked(
                lambda conn: self._reply(
                    conn,
                    new_method_call(SYSTEMD, "KillUnit", "ssi", (unit, whom, signal_number)),
                    "KillUnit",
                    unit,
                    self.timeout,
                )
            )
        except SystemdError as exc:
            if exc.name == NO_SUCH_UNIT:
                return False
            raise
        return True

    def set_unit_properties(self, unit: str, properties: list[Property], runtime: bool = True) -> None:
        """SetUnitProperties; ``runtime`` keeps the change out of /etc (it lives until the unit goes)."""
        self._locked(
            lambda conn: self._reply(
                conn,
                new_method_call(SYSTEMD, "SetUnitProperties", "sba(sv)", (unit, runtime, properties)),
                "SetUnitProperties",
                unit,
                self.timeout,
            )
        )

    def unit_path(self, unit: str) -> str | None:
        """The object path of a loaded unit, or None when systemd does not know it."""
        try:
            (path,) = self._locked(
                lambda conn: self._reply(
                    conn, new_method_call(SYSTEMD, "GetUnit", "s", (unit,)), "GetUnit", unit, self.timeout
                )
            )
        except SystemdError as exc:
            if exc.name == NO_SUCH_UNIT:
                return None
            raise
        return str(path)

    def unit_property(self, unit: str, interface: str, name: str) -> Any:
        """One property of a loaded unit (interface e.g. org.freedesktop.systemd1.Unit); None if unknown."""
        path = self.unit_path(unit)
        if path is None:
            return None
        address = DBusAddress(path, bus_name=SYSTEMD.bus_name, interface=PROPERTIES)
        (value,) = self._locked(
            lambda conn: self._reply(
                conn, new_method_call(address, "Get", "ss", (interface, name)), "Get", unit, self.timeout
            )
        )
        _signature, data = value
        return data
