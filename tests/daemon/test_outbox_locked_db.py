"""A state database another process keeps locked past the busy timeout (an operator's `sqlite3`
shell in a write transaction) refuses the outbox's writes, and the event hub's start's, as a
full disk does (`storage`): each waits, tries again every STORAGE_RETRY_S and warns once an
interval, crashing nothing, and goes on once the lock is let go. A real second connection holds the
lock on the real database file; the store's busy timeout is lowered so each refusal comes at
once."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import ActorState, ChildSpec, Node, Strategy, Supervisor, run_root
from meshactors.event_hub import EventHub
from meshactors.store import db as store_db
from meshactors.store import events as event_log
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import StoreActor
from meshactors.store.retry import STORAGE_RETRY_S
from tests.daemon.outbox_parts import HeldStoreCall, outbox_parts
from tests.support import publish, store_quiet

LOCKED_BUSY_MS = 10  # the store's busy timeout here: a locked write is refused soon, not in 5 s
LOCKED_WAIT = 10.0  # seconds (real) for each store call the test waits for
LOCKED_RETRIES = 3  # refused attempts after the first, while the lock is held


def _never(params: Mapping[str, Any], result: object) -> bool:
    """Hold no call: the test only waits for each to be made."""
    return False


async def _tried(
    call: HeldStoreCall, store: StoreActor, node: Node, state: ActorState = ActorState.RUNNING
) -> None:
    """Wait for `call` to be made, then for the store to answer it and what follows to settle
    (the actor waits out its pause): the actor is still in `state`, never restarted."""
    with trio.fail_after(LOCKED_WAIT):
        await call.called.wait()
    call.called = trio.Event()
    await store_quiet(store, LOCKED_WAIT)  # answered: a store call after it is
    assert (node.state, node.restarts) == (state, 0)


async def test_a_database_locked_past_the_busy_timeout_makes_the_outbox_wait_not_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", LOCKED_BUSY_MS)
    recovery = HeldStoreCall.hold(monkeypatch, outbox_db, "recover_inflight", _never)
    async with outbox_parts(tmp_path) as parts:
        shell = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        with contextlib.closing(shell), structlog.testing.capture_logs() as logs:
            shell.execute("BEGIN IMMEDIATE")  # an operator's shell holds the write lock
            node = await parts.supervise_outbox()
            await _tried(recovery, parts.store, node)  # the start's recovery: refused
            for _ in range(LOCKED_RETRIES):
                mock_clock.jump(STORAGE_RETRY_S)
                await _tried(recovery, parts.store, node)  # refused again
            shell.execute("ROLLBACK")
            mock_clock.jump(STORAGE_RETRY_S)
            await _tried(recovery, parts.store, node)  # written
        assert node.figures is not None
        assert node.figures()["storage_refused"] == 1 + LOCKED_RETRIES
        warnings = [e for e in logs if e["event"].startswith("the state database refuses writes")]
        assert len(warnings) == 1  # once per STORAGE_LOG_INTERVAL_S, not once per attempt
        assert "lock" in warnings[0]["error"]
        assert (node.state, node.restarts) == (ActorState.RUNNING, 0)


async def test_a_database_locked_past_the_busy_timeout_makes_the_hub_s_start_wait_not_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """The start's numbering (a write: the spent mark) is refused while the lock is held:
    the hub waits and starts once it is let go; a crash would restart it, and every child of
    the daemon's rest_for_one root after it, until the daemon gave up."""
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", LOCKED_BUSY_MS)
    numbering = HeldStoreCall.hold(monkeypatch, event_log, "resume_numbering", _never)
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    tree = Supervisor(children=[ChildSpec("store", store)], strategy=Strategy.REST_FOR_ONE)
    tree_node = Node(name="tree", kind="supervisor")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, tree_node)  # the store makes the database
        shell = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        with contextlib.closing(shell), structlog.testing.capture_logs() as logs:
            shell.execute("BEGIN IMMEDIATE")  # an operator's shell holds the write lock
            # the hub as the root's last child (the start waits, well within ASK_TIMEOUT)
            nursery.start_soon(tree.start_child, ChildSpec("events", hub))
            with trio.fail_after(LOCKED_WAIT):
                await numbering.called.wait()  # the start's numbering: refused
            numbering.called = trio.Event()
            await store_quiet(store, LOCKED_WAIT)
            node = tree_node.children["events"]
            assert (node.state, node.restarts) == (ActorState.STARTING, 0)
            for _ in range(LOCKED_RETRIES):
                mock_clock.jump(STORAGE_RETRY_S)
                await _tried(numbering, store, node, ActorState.STARTING)  # refused again
            shell.execute("ROLLBACK")
            mock_clock.jump(STORAGE_RETRY_S)
            await _tried(numbering, store, node)  # written: the hub runs
            with trio.fail_after(LOCKED_WAIT):
                (event,) = await publish(hub, "tick", {"n": 0})
            assert event.event_id == 1
            nursery.cancel_scope.cancel()
    warnings = [e for e in logs if e["event"].startswith("the state database refuses writes")]
    assert len(warnings) == 1  # once per STORAGE_LOG_INTERVAL_S, not once per attempt
    assert "lock" in warnings[0]["error"] and "event hub" in warnings[0]["event"]
