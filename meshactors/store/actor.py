"""The `store` actor: owns the one SQLite connection and runs repository calls one at a time,
the calls that queued up together in one trip to its worker thread and one transaction."""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import trio

from meshactors.actors import Actor, Inbox, Reply, cleanup_scope, take_queued
from meshactors.store import db
from meshactors.wire.ipc import ErrorCode, OpError

T = TypeVar("T")

STORE_CALL_TIMEOUT = 30.0  # seconds a caller waits for a queued store call (SQLite busy waits 5 s)
STORE_INBOX_CAPACITY = 256  # queued calls before callers wait
STORE_TRIP_CALLS = 64  # queued calls run in one worker-thread trip and one transaction


# SQLite primary result codes that mean the disk, not the request, is at fault; a lock another
# connection (an operator's `sqlite3` shell) held past the busy timeout is one too, for now
_STORAGE_FAULTS = {
    sqlite3.SQLITE_BUSY: "another process holds its lock past the busy timeout",
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_IOERR: "an I/O error",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
    sqlite3.SQLITE_CORRUPT: "the database is corrupt",
}


def storage_error(exc: sqlite3.Error, path: Path) -> Exception:
    """An OpError(storage) naming the fault when SQLite says the storage failed (or stayed
    locked past db.BUSY_TIMEOUT_MS), else `exc`: a client hears `storage`, never `internal`, and
    the daemon's own writers wait for the disk as they do for a full one."""
    code = getattr(exc, "sqlite_errorcode", None)
    reason = None if code is None else _STORAGE_FAULTS.get(code & 0xFF)
    if reason is None:
        return exc
    return OpError(ErrorCode.STORAGE, f"the state database {path} cannot be written: {reason}")


@attrs.frozen
class StoreCall:
    """Run `fn(conn)` in the store's worker thread and answer with its result."""

    fn: Callable[[sqlite3.Connection], Any]
    reply: Reply[Any]


@attrs.define(eq=False)
class StoreActor(Actor):
    """Serialises all database access through one connection and one worker thread."""

    kind: ClassVar[str] = "store"

    path: Path
    inbox: Inbox[StoreCall] = attrs.field(factory=lambda: Inbox(STORE_INBOX_CAPACITY))
    calls: int = 0
    trips: int = 0  # worker-thread trips the calls took
    failures: int = 0
    busy_seconds: float = 0.0

    async def call(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        what: str,
        timeout: float = STORE_CALL_TIMEOUT,
        settle: bool = False,
    ) -> T:
        """Run a repository function against the database and return its result (AskTimeout
        after `timeout` seconds: the call may still run later); with `settle`, a stop for good
        of the caller waits for the result too (`ask`), so it can act on what it committed."""
        result: T = await self.inbox.ask(
            lambda reply: StoreCall(fn, reply),
            timeout=timeout,
            what=f"store: {what}",
            settle=settle,
        )
        return result

    async def background_call(
        self, fn: Callable[[sqlite3.Connection], T], *, what: str, settle: bool = False
    ) -> T:
        """`call`, its answer waited for however long the store takes: for the daemon's own
        background work (the outbox's, the event hub's, a network's), whose only waiter is one
        of its caller's tasks, so a store slower than STORE_CALL_TIMEOUT delays that work, never
        crashes its actor (and, the root being rest_for_one, those after it). The store's stop or
        crash ends the wait, and so does the caller's own cancellation (its actor's stop, the
        daemon's shutdown, a start cancelled; with `settle`, a stop for good after the answer,
        within its cleanup budget). A call answering a client keeps `call`'s deadline."""
        return await self.call(fn, what=what, timeout=math.inf, settle=settle)

    def figures(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "calls": self.calls,
            "trips": self.trips,
            "failures": self.failures,
            "busy_s": round(self.busy_seconds, 3),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        conn = await trio.to_thread.run_sync(db.open_database, self.path)
        try:
            task_status.started()
            async for first in self.inbox.receiver:
                calls = [first, *take_queued(self.inbox.receiver, STORE_TRIP_CALLS - 1)]
                began = trio.current_time()
                try:
                    outcomes = await trio.to_thread.run_sync(_run_calls, calls, conn)
                except BaseException:
                    for call in calls:  # taken, never to be run (the store stops): the
                        call.reply.drop()  # asker hears ActorGone now, not at its deadline
                    raise
                finally:
                    self.calls += len(calls)
                    self.trips += 1
                    self.busy_seconds += trio.current_time() - began
                for call, (result, error) in zip(calls, outcomes, strict=True):
                    if error is None:
                        call.reply.ok(result)
                        continue
                    self.failures += 1
                    if isinstance(error, sqlite3.Error):
                        error = storage_error(error, self.path)
                    call.reply.fail(error)
        finally:
            with cleanup_scope():
                await trio.to_thread.run_sync(conn.close)


_Outcome = tuple[Any, Exception | None]


def _run_calls(calls: list[StoreCall], conn: sqlite3.Connection) -> list[_Outcome]:
    """Run the calls in turn in the worker thread, in one transaction: group commit, one
    commit for all that queued together. Each call is a savepoint, so its failure is its own
    answer and undoes only its own writes; nobody is answered before the commit, and a commit
    that fails fails them all."""
    if len(calls) == 1:
        return [_alone(calls[0], conn)]
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        with _lock_waited_for(conn, exc):
            return [_alone(call, conn) for call in calls]
    outcomes: list[_Outcome] = []
    for index, call in enumerate(calls):
        outcomes.append(_in_savepoint(call, conn))
        if not conn.in_transaction:  # SQLite rolled it all back itself (a full disk, I/O)
            lost = outcomes[-1][1] or sqlite3.OperationalError("the transaction was rolled back")
            rest = [_alone(later, conn) for later in calls[index + 1 :]]
            return [(None, lost)] * (index + 1) + rest
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(None, exc)] * len(calls)
    return outcomes


@contextlib.contextmanager
def _lock_waited_for(conn: sqlite3.Connection, exc: sqlite3.Error) -> Iterator[None]:
    """When `exc` says another process held the lock past the busy timeout, the rest of the
    trip does not wait for it again (a writer is refused at once, `storage`; reads need no
    lock in WAL): 64 calls waiting 5 s each would hold the store, and the watchdog's probe
    queued behind them, for minutes."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
        yield
        return
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout = {db.BUSY_TIMEOUT_MS}")


def _alone(call: StoreCall, conn: sqlite3.Connection) -> _Outcome:
    """One call on its own (its repository function opens its own transaction if it writes)."""
    try:
        return (call.fn(conn), None)
    except Exception as exc:
        return (None, exc)


def _in_savepoint(call: StoreCall, conn: sqlite3.Connection) -> _Outcome:
    """One call inside the group's transaction, undone alone if it fails."""
    conn.execute("SAVEPOINT call")
    try:
        result = call.fn(conn)
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
        return (None, exc)
    conn.execute("RELEASE call")
    return (result, None)
