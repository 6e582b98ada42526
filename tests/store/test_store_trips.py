"""The store actor runs calls that queued up together in one worker-thread trip and one
transaction, each with its own answer: a failing call fails alone and undoes only its own
writes, the order of calls is kept, and nobody is told of a write SQLite rolled back; calls
a store that stops took and never ran are dropped, so their askers hear it at once; a trip
whose transaction another process's lock refused waits for that lock once, not per call."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import ActorGone, Node, run_root
from meshactors.store import db
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import STORE_TRIP_CALLS, StoreActor
from meshactors.store.db import open_database
from meshactors.store.outbox import AcceptOutcome, SendError
from meshactors.wire.ipc import ErrorCode, OpError

WAIT = 10.0  # seconds the test may take
LOCKED_BUSY_MS = 10  # the store's busy timeout while another process holds the lock


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


def _no_setup(conn: sqlite3.Connection) -> None:
    """Nothing to do before the trip."""


async def run_grouped(
    tmp_path: Path,
    calls: list[Callable[[sqlite3.Connection], object]],
    setup: Callable[[sqlite3.Connection], object] = _no_setup,
    later: Callable[[sqlite3.Connection], object] = _keys,
) -> tuple[list[object], Any, list[str]]:
    """Run `calls` in one trip (queued behind a call that holds the worker thread until all
    are queued, having run `setup` first): each call's result or error, what `later` (the keys
    kept, unless told otherwise) answers in a trip after it on the same store and connection,
    and the statements SQLite ran."""
    store = StoreActor(tmp_path / "state.db")
    release, statements = threading.Event(), []
    results: list[object] = [None] * len(calls)

    def hold(conn: sqlite3.Connection) -> None:
        setup(conn)
        conn.set_trace_callback(statements.append)
        release.wait(WAIT)

    async def call(index: int) -> None:
        try:
            results[index] = await store.call(calls[index], what=f"call {index}")
        except Exception as exc:
            results[index] = exc

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, store, Node(name="store", kind="store"))
            async with trio.open_nursery() as callers:
                callers.start_soon(partial(store.call, hold, what="hold"))
                await trio.testing.wait_all_tasks_blocked()
                for index in range(len(calls)):
                    callers.start_soon(call, index)
                    await trio.lowlevel.checkpoint()
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            after = await store.call(later, what="a later trip")
            nursery.cancel_scope.cancel()
    return results, after, statements


def _insert_then_fail(conn: sqlite3.Connection) -> None:
    _insert(99)(conn)
    raise ValueError("refused after writing")


async def test_a_trip_commits_once_and_a_failing_call_undoes_only_its_own_writes(
    tmp_path: Path,
) -> None:
    results, keys, statements = await run_grouped(
        tmp_path, [_insert(1), _insert_then_fail, _insert(2), _broken_sql, _insert(3)]
    )
    assert results[0::2] == [1, 2, 3]
    assert isinstance(results[1], ValueError) and isinstance(results[3], sqlite3.Error)
    assert keys == ["k1", "k2", "k3"]  # k99 undone with the call that wrote it
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1


def _rolls_everything_back(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")  # what SQLite does itself on a full disk or an I/O error
    raise sqlite3.OperationalError("database or disk is full")


async def test_when_sqlite_rolls_a_trip_back_the_calls_before_are_told_and_the_rest_run_alone(
    tmp_path: Path,
) -> None:
    results, keys, _ = await run_grouped(tmp_path, [_insert(1), _rolls_everything_back, _insert(2)])
    assert all(isinstance(result, sqlite3.Error) for result in results[:2])  # k1 was lost
    assert results[2] == 2
    assert keys == ["k2"]


def _accept(key: str | None, message: str, priority: str = "next") -> Callable[..., object]:
    """An accept of `message` to one peer under `key`, as the `send` op makes it."""
    return partial(
        outbox_db.accept,
        network="n",
        recipients=["peer"],
        destination_kind="peer",
        destination_ref="peer",
        message=message,
        priority=priority,
        meta=None,
        reply_to_id=None,
        client_message_id=key,
        now_ms=1_000,
    )


def _rows(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT client_message_id, message FROM outbox ORDER BY id").fetchall()


async def test_same_key_accepts_in_one_trip_make_one_row_and_the_same_answer(
    tmp_path: Path,
) -> None:
    results, _, statements = await run_grouped(
        tmp_path,
        [
            _accept("k", "hello"),
            _accept("k", "hello"),
            _accept("k", "other body"),  # same key, different body: the existing conflict
            _accept("k", "hello", priority="urgent"),  # a bad request fails only itself
            _accept("j", "hello"),
            _accept("k", "hello"),
        ],
    )
    first, again, conflict, bad, other, third = results
    assert isinstance(first, AcceptOutcome) and first.outcome == "accepted"
    assert again == third == first  # one row, the same answer to every repeat
    assert isinstance(conflict, AcceptOutcome) and conflict.outcome == "conflict"
    assert (conflict.id, conflict.reason) == (first.id, "pending_fingerprint_mismatch")
    assert isinstance(bad, SendError) and bad.code == "invalid_request"
    assert isinstance(other, AcceptOutcome) and other.outcome == "accepted"
    assert other.id != first.id
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    with contextlib.closing(open_database(tmp_path / "state.db")) as conn:
        assert _rows(conn) == [("k", "hello"), ("j", "hello")]


async def test_calls_a_stopping_store_took_and_never_ran_are_dropped_at_once(
    tmp_path: Path,
) -> None:
    """A store stopped after taking calls off its inbox and before its worker thread ran them
    (every thread of trio's limiter busy elsewhere) drops them: each asker hears ActorGone at
    once, not AskTimeout at its deadline."""
    store = StoreActor(tmp_path / "state.db")
    stopping = trio.CancelScope()
    answers, answered = trio.open_memory_channel[object](2)

    async def run_store(task_status: trio.TaskStatus[None]) -> None:
        with stopping:
            await run_root(store, Node(name="store", kind="store"), task_status=task_status)

    async def ask(n: int) -> None:
        try:
            answers.send_nowait(await store.call(_insert(n), what=f"call {n}"))
        except ActorGone as gone:
            answers.send_nowait(gone)

    limiter = trio.to_thread.current_default_thread_limiter()
    others = [object() for _ in range(int(limiter.total_tokens))]
    async with trio.open_nursery() as nursery:
        await nursery.start(run_store)
        for other in others:  # the threads are busy: a trip waits for one
            limiter.acquire_on_behalf_of_nowait(other)
        try:
            nursery.start_soon(ask, 1)
            nursery.start_soon(ask, 2)
            await trio.testing.wait_all_tasks_blocked()  # both taken, waiting for a thread
            assert store.inbox.statistics().current_buffer_used == 0
            stopping.cancel()
            with trio.fail_after(WAIT):  # well before the calls' deadline
                outcomes = [await answered.receive() for _ in range(2)]
        finally:
            for other in others:
                limiter.release_on_behalf_of(other)
    assert [type(outcome) for outcome in outcomes] == [ActorGone, ActorGone]


def _busy_timeout(conn: sqlite3.Connection) -> int:
    """How long, in ms, the call's statements wait for another connection's lock."""
    timeout: int = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    return timeout


async def test_a_trip_another_process_s_lock_refuses_waits_for_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's `sqlite3` shell holds the write lock on the real database file: the trip's
    transaction waits the busy timeout and is refused, and its calls, run alone, wait no more
    (a writer refused at once, `storage`; a read answered): 64 calls waiting in turn would hold
    the store for minutes. A later trip on the same connection waits for the lock again."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", LOCKED_BUSY_MS)
    open_database(tmp_path / "state.db").close()  # made before the shell opens it
    shell = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)

    def lock(conn: sqlite3.Connection) -> None:
        shell.execute("BEGIN IMMEDIATE")

    with contextlib.closing(shell):
        results, later_wait, _ = await run_grouped(
            tmp_path,
            [_insert(1), _busy_timeout, _insert(2), _keys],
            setup=lock,
            later=_busy_timeout,
        )
        shell.execute("ROLLBACK")
    refused = [result for result in results[0::2] if isinstance(result, OpError)]
    assert [error.code for error in refused] == [ErrorCode.STORAGE] * 2
    assert results[1::2] == [0, []]
    assert later_wait == LOCKED_BUSY_MS
