"""The metadata store.

Records are JSON documents keyed by (kind, id): pods, containers, images, leases... Each write is one
SQLite transaction in WAL mode, so a kill -9 at any moment leaves either the old or the new record, never
half of one. ``synchronous=NORMAL`` is enough for that (a committed transaction is in the WAL before the
call returns; only a power loss can drop the last ones, and then the containers are gone too and recovery
reconciles); FULL cost 1 ms of fsync per commit here, 18% of a RunPodSandbox.

Domain modules keep their own in-memory indexes for fast List* calls and use the store only to persist
and to rebuild them at start.

Schema changes are numbered migrations applied in order at open; the version lives in ``PRAGMA
user_version``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Migration N brings the schema from version N to N+1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE records (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    pass


class Transaction:
    """Writes made inside ``Store.transaction()``; all of them land together or none does."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def put(self, kind: str, object_id: str, record: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO records (kind, id, data) VALUES (?, ?, ?)",
            (kind, object_id, json.dumps(record, separators=(",", ":"), sort_keys=True)),
        )

    def delete(self, kind: str, object_id: str) -> None:
        self._conn.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, object_id))

    def set_setting(self, key: str, value: Any) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )


class Store:
    """Thread-safe access to one database file (one connection, serialised by a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Root's alone: SQLite makes the -wal and -shm files with the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this Calyx knows ({SCHEMA_VERSION})"
                )
            for number in range(version, SCHEMA_VERSION):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in MIGRATIONS[number].split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version = {number + 1}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def put(self, kind: str, object_id: str, record: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.put(kind, object_id, record)

    def delete(self, kind: str, object_id: str) -> None:
        with self.transaction() as tx:
            tx.delete(kind, object_id)

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT data FROM records WHERE kind = ? AND id = ?", (kind, object_id)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def list(self, kind: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT id, data FROM records WHERE kind = ?", (kind,)).fetchall()
        return {object_id: json.loads(data) for object_id, data in rows}

    def setting(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as tx:
            tx.set_setting(key, value)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
