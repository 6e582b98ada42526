"""Events the hub dropped unnumbered (no spent id left: the log that far behind) may have held
a `peer_active`: the outbox's watch, told by the `events_dropped` event that follows them,
catches up from how things stand, as it does when it lags."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors import event_hub
from meshactors.daemon.outbox import Outbox, _PeerWork
from tests.daemon.outbox_parts import outbox_parts

DROPPED_WAIT = 10.0  # seconds for the hub's drop, its events_dropped and the outbox's catch-up
DROPPED_SPEND_AHEAD = 4  # ids the log marks spent ahead: a stalled log runs out after these


async def test_an_events_dropped_event_makes_the_outbox_catch_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "SPEND_AHEAD", DROPPED_SPEND_AHEAD)
    real_catch_up = Outbox._catch_up
    catch_ups: list[trio.Event] = [trio.Event(), trio.Event()]

    async def counted_catch_up(outbox: Outbox, work: trio.MemorySendChannel[_PeerWork]) -> None:
        next(event for event in catch_ups if not event.is_set()).set()
        await real_catch_up(outbox, work)

    monkeypatch.setattr(Outbox, "_catch_up", counted_catch_up)
    async with outbox_parts(tmp_path) as parts:
        await parts.start_outbox()
        with trio.fail_after(DROPPED_WAIT):
            await catch_ups[0].wait()  # the watch's start
        stall = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        with contextlib.closing(stall):
            stall.execute("BEGIN IMMEDIATE")  # the log stalls: it marks no more ids spent
            for n in range(DROPPED_SPEND_AHEAD + 2):  # the last two find no spent id left
                parts.hub.publish("tick", {"n": n})
            await trio.testing.wait_all_tasks_blocked()
            assert parts.hub.figures()["dropped"] == 2
            stall.execute("COMMIT")
        with trio.fail_after(DROPPED_WAIT):
            await parts.hub.flush()
            parts.hub.publish("tick", {"n": "after"})  # events_dropped is numbered before it
            await catch_ups[1].wait()
