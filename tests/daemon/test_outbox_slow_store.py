"""A received message whose store call takes longer than STORE_CALL_TIMEOUT is stored all the
same once the store gets to it, so its `message` event is published then: giving the call up
would lose the event for good, as the sender's redelivery is answered `duplicate`, which
publishes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors.clock import wall_ms
from meshactors.daemon import outbox as outbox_module
from meshactors.network.message_frames import Msg
from meshactors.store.actor import STORE_CALL_TIMEOUT, StoreActor
from meshactors.store.events import Event
from tests.daemon.outbox_parts import outbox_parts
from tests.network.test_events_at_stop import HeldStoreCall

SLOW_WAIT = 10.0  # seconds (real, once the clock runs) for the events the test waits for
SLOW_KEY = "slow-store"  # the message whose first store call outlives STORE_CALL_TIMEOUT


def _msg(key: str) -> Msg:
    """A durable message from a peer, under `key`."""
    return Msg(key, key, "m", None, "next", None, wall_ms())


def _nothing(conn: sqlite3.Connection) -> None:
    """A store call that does nothing: its answer says the calls queued before it are done."""


async def _store_idle(store: StoreActor) -> None:
    """Return once no store call runs or waits and none is made (the clock stands still, so
    only a store answer could start another): a round with no call but the test's own."""
    while True:
        await trio.testing.wait_all_tasks_blocked()
        before = store.calls
        await store.call(_nothing, what="test: wait for the store")
        await trio.testing.wait_all_tasks_blocked()
        if store.calls == before + 1:
            return


async def test_a_store_slower_than_the_call_timeout_still_tells_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    held = HeldStoreCall(
        "store_received", lambda batch: any(i.frame.client_message_id == SLOW_KEY for i in batch)
    )
    monkeypatch.setattr(outbox_module, "store_received", held)
    async with outbox_parts(tmp_path) as parts:
        watch, _ = await parts.hub.subscribe(16)
        outbox = await parts.start_outbox()
        await _store_idle(parts.store)  # the start's calls are done: none waits on the jump
        outbox._queue_received("net1", "dev-a", [_msg(SLOW_KEY)])
        with trio.fail_after(SLOW_WAIT):
            await held.done.wait()  # stored, its answer held past the deadline below
        mock_clock.jump(STORE_CALL_TIMEOUT + 1)
        await trio.testing.wait_all_tasks_blocked()  # the outbox's wait is past its deadline
        held.release.set()
        mock_clock.rate = 1  # the clock runs again: the waits below are bounded
        # the sender, not acked in time, sends it again; then something new
        outbox._queue_received("net1", "dev-a", [_msg(SLOW_KEY), _msg("after")])
        told: list[str] = []
        with trio.fail_after(SLOW_WAIT):
            async for event in watch:
                if isinstance(event, Event) and event.kind == "message":
                    told.append(event.data["client_message_id"])
                    if told[-1] == "after":
                        break
        assert told == [SLOW_KEY, "after"]
