"""Durable metadata: an SQLite database in WAL mode, one table of JSON records per kind of object."""

from cri.store.db import Store

__all__ = ["Store"]
