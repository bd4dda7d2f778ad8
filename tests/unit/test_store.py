"""The metadata store: atomic transactions, schema versioning, and consistency after kill -9."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cri.store import Store
from cri.store.db import SCHEMA_VERSION, StoreError


def test_put_get_list_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.put("pod", "a", {"name": "x", "labels": {"k": "v"}})
    store.put("pod", "b", {"name": "y"})
    store.put("container", "a", {"name": "other kind"})
    assert store.get("pod", "a") == {"name": "x", "labels": {"k": "v"}}
    assert set(store.list("pod")) == {"a", "b"}
    store.delete("pod", "a")
    assert store.get("pod", "a") is None
    assert store.get("container", "a") == {"name": "other kind"}


def test_a_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.put("pod", "keep", {"v": 1})
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put("pod", "new", {"v": 2})
        tx.delete("pod", "keep")
        raise RuntimeError("step failed")
    assert store.get("pod", "keep") == {"v": 1}
    assert store.get("pod", "new") is None


def test_data_and_settings_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.put("image", "sha256:1", {"tags": ["a"]})
    store.set_setting("pod_cidr", "10.0.0.0/24")
    store.close()
    again = Store(tmp_path / "s.db")
    assert again.get("image", "sha256:1") == {"tags": ["a"]}
    assert again.setting("pod_cidr") == "10.0.0.0/24"
    assert again.setting("missing", "dflt") == "dflt"
    assert again.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "s.db")


WRITER = """
import sys
from pathlib import Path
from cri.store import Store
store = Store(Path(sys.argv[1]))
i = 0
while True:
    with store.transaction() as tx:  # a pod and its lease land together or not at all
        tx.put("pod", f"p{i}", {"n": i, "pad": "x" * 2000})
        tx.put("lease", f"p{i}", {"pod": f"p{i}"})
        if i >= 3:
            tx.delete("pod", f"p{i - 3}")
            tx.delete("lease", f"p{i - 3}")
    if i == 0:
        print("committed", flush=True)  # one transaction is in: the kill comes in the ones after it
    i += 1
"""


def test_kill9_mid_write_leaves_a_consistent_store(tmp_path: Path) -> None:
    for attempt in range(3):
        path = tmp_path / f"s{attempt}.db"  # the writer numbers from 0 again: a fresh store each time
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"committed"
        time.sleep(0.3 + 0.2 * attempt)  # the kill lands in some later write (where: not asserted)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = Store(path)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        pods, leases = store.list("pod"), store.list("lease")
        assert pods, "the writer made progress"
        assert set(pods) == set(leases), "a transaction was split by the kill"
        assert len(pods) <= 3
        store.close()
