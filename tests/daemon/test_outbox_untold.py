"""A death the store committed and the outbox never told (a stop or a kill came between the
commit and the `message_dead` event, or the event log refused the event) is told at the
outbox's next sweep (the first comes at its start), and only then: a further start does not
tell it again, and a sweep whose telling the log refuses tells it once, leaving it untold for
the next sweep, within the same run."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import ActorGone, Subscriber
from meshactors.clock import wall_ms
from meshactors.daemon.outbox import SWEEP_INTERVAL_S
from meshactors.event_hub import EventHub
from meshactors.store import events as event_log
from meshactors.store import outbox as outbox_db
from meshactors.store.db import open_database
from meshactors.store.events import Event
from meshactors.store.outbox import EXPIRED, TTL_MS
from tests.daemon.outbox_parts import (
    PAST_TTL_MS,
    HeldStoreCall,
    OutboxParts,
    outbox_parts,
    stored_untold,
    untold_expired,
)
from tests.store.test_outbox import send
from tests.support import store_quiet

UNTOLD_WAIT = 10.0  # seconds for a start's sweep, its events and the store's release
LOG_WRITE = event_log.append_batch  # the event log's real write


def _sweeps(monkeypatch: pytest.MonkeyPatch) -> HeldStoreCall:
    """`expire_pending` held: each sweep says so (`called`, set anew by the test per start);
    the first that kills anything then holds its answer, so the outbox can be stopped with the
    death committed and untold."""
    return HeldStoreCall.hold(
        monkeypatch, outbox_db, "expire_pending", lambda _, expired: bool(expired.deliveries)
    )


async def _release_once_stopped(held: HeldStoreCall) -> None:
    """Let the held sweep answer once the stop has run its course (everything waits)."""
    await trio.testing.wait_all_tasks_blocked()
    held.release.set()


async def _told_dead(parts: OutboxParts, row_id: str) -> list[str]:
    """The errors of the `message_dead` events of row `row_id` in the event log."""
    await parts.hub.flush()
    logged = await parts.store.call(
        functools.partial(event_log.since, event_id=0, limit=event_log.MAX_REPLAY),
        what="test: read the event log",
    )
    dead = [e.data for e in logged.events if e.kind == "message_dead"]
    return [data["error"] for data in dead if data["id"] == row_id]


async def test_a_death_committed_before_a_stop_is_told_once_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.closing(open_database(tmp_path / "state.db")) as conn:
        # past its TTL, so the first sweep kills it, yet kept by retention (the dead grace)
        old = send(conn, recipients=["dev-a"], now_ms=wall_ms() - TTL_MS - PAST_TTL_MS)
    held = _sweeps(monkeypatch)
    async with trio.open_nursery() as outside, outbox_parts(tmp_path) as parts:
        await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            await held.holding.wait()  # dead in the store, not yet told
        # the stop cancels the outbox while it waits for the answer: nothing is told
        outside.start_soon(_release_once_stopped, held)
    async with outbox_parts(tmp_path) as parts:
        assert await _told_dead(parts, old.id) == []
        watch, _ = await parts.hub.subscribe(16)
        held.called = trio.Event()
        await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            async for event in watch:
                if isinstance(event, Event) and event.kind == "message_dead":
                    assert event.data == {"id": old.id, "recipient": "dev-a", "error": EXPIRED}
                    break
            await held.called.wait()  # the sweep runs after the start's telling: marked told
    async with outbox_parts(tmp_path) as parts:
        held.called = trio.Event()
        await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            await held.called.wait()
        assert await _told_dead(parts, old.id) == [EXPIRED]


def refusing_log_writes(conn: sqlite3.Connection, **params: Any) -> None:
    """Stands in for `append_batch`: the state database refuses the event log's write alone,
    as a full disk refuses it (SQLITE_READONLY: the store answers `storage`)."""
    conn.execute("PRAGMA query_only = 1")
    try:
        LOG_WRITE(conn, **params)
    finally:
        conn.execute("PRAGMA query_only = 0")


async def test_a_death_whose_event_the_log_refused_stays_untold_told_once_a_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = untold_expired(tmp_path)
    sweeps = _sweeps(monkeypatch)  # nothing left to kill: it says when the start's telling ended
    monkeypatch.setattr(event_log, "append_batch", refusing_log_writes)
    async with outbox_parts(tmp_path) as parts:
        watch, _ = await parts.hub.subscribe(16)
        outbox = await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            await sweeps.called.wait()  # past the start's telling: it did not go round again
        published = [e for e in await _queued(watch) if e.kind == "message_dead"]
        # published once, not logged: still untold, not counted dead
        assert (len(published), outbox.counts["dead"], await stored_untold(parts)) == (1, 0, dead)
    monkeypatch.setattr(event_log, "append_batch", LOG_WRITE)  # the disk has room again
    async with outbox_parts(tmp_path) as parts:
        sweeps.called = trio.Event()
        await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            await sweeps.called.wait()
        assert await _told_dead(parts, dead[0][0].outbox_id) == [EXPIRED]
        assert await stored_untold(parts) == []


async def _queued(watch: Subscriber[Event]) -> list[Event]:
    """The events a hub subscription has queued by now (none is waited for)."""
    return [event for _ in range(watch.queued) if isinstance(event := await watch.receive(), Event)]


async def test_a_death_whose_telling_the_log_refused_is_told_at_a_later_sweep_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1  # the waits are bounded; only a jump brings the next sweep
    dead = untold_expired(tmp_path)
    sweeps = _sweeps(monkeypatch)  # nothing left to kill: it only says each sweep's telling ended
    monkeypatch.setattr(event_log, "append_batch", refusing_log_writes)
    async with outbox_parts(tmp_path) as parts:
        outbox = await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            await sweeps.called.wait()  # the start's sweep told it; the log refused it
            await store_quiet(parts.store, UNTOLD_WAIT)  # the sweep sleeps: the jump below wakes it
        assert await stored_untold(parts) == dead
        monkeypatch.setattr(event_log, "append_batch", LOG_WRITE)  # the disk has room again
        for _ in range(2):  # the next sweep tells it; the one after finds nothing to tell
            sweeps.called = trio.Event()
            mock_clock.jump(SWEEP_INTERVAL_S)
            with trio.fail_after(UNTOLD_WAIT):
                await sweeps.called.wait()
                await store_quiet(parts.store, UNTOLD_WAIT)
        told = await _told_dead(parts, dead[0][0].outbox_id)
        assert (told, await stored_untold(parts), outbox.counts["dead"]) == ([EXPIRED], [], 1)


async def test_a_start_whose_hub_is_gone_asks_it_once_per_untold_death(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.closing(open_database(tmp_path / "state.db")) as conn:
        for n in range(2):
            send(
                conn,
                recipients=["dev-a"],
                client_message_id=f"gone-{n}",
                now_ms=wall_ms() - TTL_MS - PAST_TTL_MS,
            )
            outbox_db.expire_pending(conn, now_ms=wall_ms())  # dead and untold
    sweeps = _sweeps(monkeypatch)
    asked: list[int] = []

    async def hub_gone(hub: EventHub, kind: str, datas: Sequence[dict[str, Any]]) -> bool:
        asked.append(len(datas))
        raise ActorGone("publish and log events: the actor is not running")

    monkeypatch.setattr(EventHub, "publish_logged", hub_gone)
    async with outbox_parts(tmp_path) as parts:
        await parts.start_outbox()
        with trio.fail_after(UNTOLD_WAIT):
            await sweeps.called.wait()  # past the start's telling: it did not go round again
        untold = await parts.store.call(
            functools.partial(outbox_db.untold_deaths, limit=10), what="test: read untold"
        )
        assert (asked, len(untold)) == ([2], 2)  # asked once for both, both still untold
