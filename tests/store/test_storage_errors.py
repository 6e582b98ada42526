"""A database the disk refuses, or another process keeps locked, becomes a `storage` error
naming the fault, not `internal`."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

from meshactors.actors import Node, run_root
from meshactors.store import db
from meshactors.store.actor import StoreActor, storage_error
from meshactors.store.db import immediate
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


LOCKED_BUSY_MS = 10  # the store's busy timeout here: a locked write is refused soon, not in 5 s
LOCKED_WAIT = 10.0  # seconds the test's store calls may take


def _write(conn: sqlite3.Connection) -> None:
    """A write of one setting, in a transaction of its own."""
    with immediate(conn):
        conn.execute(
            "INSERT OR REPLACE INTO local_settings (network, key, value_json)"
            " VALUES ('t', 'k', '1')"
        )


async def test_a_lock_held_past_the_busy_timeout_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's `sqlite3` shell holding a write transaction on the real database file:
    the store's write waits the busy timeout, then is answered `storage` naming the lock (a
    client hears that, not `internal`), and goes through once the shell lets go."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", LOCKED_BUSY_MS)
    path = tmp_path / "state.db"
    store = StoreActor(path)
    with trio.fail_after(LOCKED_WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, store, Node(name="store", kind="store"))
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as shell:
                shell.execute("BEGIN IMMEDIATE")
                with pytest.raises(OpError) as refused:
                    await store.call(_write, what="write")
                shell.execute("ROLLBACK")
            await store.call(_write, what="write again")
            nursery.cancel_scope.cancel()
    assert refused.value.code is ErrorCode.STORAGE
    assert "lock" in refused.value.message and str(path) in refused.value.message
