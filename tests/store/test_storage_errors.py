"""A database the disk refuses becomes a `storage` error naming the fault, not `internal`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meshactors.store.actor import storage_error
from meshactors.wire.ipc import ErrorCode, OpError


def test_a_read_only_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        readonly.execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        error = storage_error(exc, path)
    assert isinstance(error, OpError)
    assert error.code is ErrorCode.STORAGE
    assert "read-only" in error.message and str(path) in error.message


def test_a_bad_query_stays_what_it_was(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        conn.execute("SELECT * FROM missing")
    except sqlite3.Error as exc:
        assert storage_error(exc, tmp_path) is exc
