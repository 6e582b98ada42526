"""The store actor runs calls that queued up together in one worker-thread trip, each with its
own answer: a failing call fails alone, and the order of calls is kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from meshactors.actors import Node, run_root
from meshactors.store.actor import STORE_TRIP_CALLS, StoreActor
from meshactors.wire.ipc import OpError

WAIT = 10.0  # seconds the test may take


def _insert(value: int) -> Callable[[sqlite3.Connection], int]:
    def insert(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO local_settings VALUES ('n', ?, '0')", (f"k{value}",))
        return value

    return insert


def _broken_sql(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO no_such_table VALUES (1)")


def _keys(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT key FROM local_settings ORDER BY rowid")]


async def test_queued_calls_share_trips_and_answer_each_on_its_own(tmp_path: Path) -> None:
    store = StoreActor(tmp_path / "state.db")
    count = STORE_TRIP_CALLS * 2 + 3
    results: dict[int, object] = {}

    async def call(n: int) -> None:
        fn: Callable[[sqlite3.Connection], object] = _broken_sql if n == 5 else _insert(n)
        try:
            results[n] = await store.call(fn, what=f"call {n}")
        except sqlite3.Error as exc:
            results[n] = exc

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, store, Node(name="store", kind="store"))
            async with trio.open_nursery() as callers:
                for n in range(count):
                    callers.start_soon(call, n)
                    await trio.lowlevel.checkpoint()  # queued in this order
            keys = await store.call(_keys, what="keys")
            nursery.cancel_scope.cancel()

    assert isinstance(results.pop(5), sqlite3.OperationalError)
    assert results == {n: n for n in range(count) if n != 5}
    assert keys == [f"k{n}" for n in range(count) if n != 5]
    assert store.calls == count + 1
    assert store.trips <= count // 2  # calls that waited went together
    assert store.failures == 1


async def test_a_storage_fault_in_a_trip_is_a_storage_error(tmp_path: Path) -> None:
    store = StoreActor(tmp_path / "state.db")

    def full(conn: sqlite3.Connection) -> None:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise error

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, store, Node(name="store", kind="store"))
            with pytest.raises(OpError) as refused:
                await store.call(full, what="write")
            assert await store.call(_keys, what="still serving") == []
            nursery.cancel_scope.cancel()
    assert refused.value.code == "storage"
