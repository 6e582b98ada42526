"""A received message whose store call takes longer than STORE_CALL_TIMEOUT is stored all the
same once the store gets to it, so its `message` event is published then: giving the call up
would lose the event for good, as the sender's redelivery is answered `duplicate`, which
publishes nothing. A sweep whose read of the untold deaths takes as long tells them once the
store answers, instead of crashing the outbox."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors.clock import wall_ms
from meshactors.daemon import outbox as outbox_module
from meshactors.network.message_frames import Msg
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import STORE_CALL_TIMEOUT
from meshactors.store.events import Event
from meshactors.store.outbox import EXPIRED, DeliveryKey
from tests.daemon.outbox_parts import outbox_parts, stored_untold, untold_expired
from tests.network.test_events_at_stop import HeldStoreCall
from tests.support import store_quiet

SLOW_WAIT = 10.0  # seconds (real, once the clock runs) for the events the test waits for
SLOW_KEY = "slow-store"  # the message whose first store call outlives STORE_CALL_TIMEOUT


def _msg(key: str) -> Msg:
    """A durable message from a peer, under `key`."""
    return Msg(key, key, "m", None, "next", None, wall_ms())


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
        # the start's calls are done: none waits on the jump
        await store_quiet(parts.store, SLOW_WAIT)
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


class HeldUntoldRead:
    """Stands in for `still_untold`: the first call runs, says so (`holding`), then holds its
    answer in the store's thread until `release`."""

    def __init__(self) -> None:
        self.real = outbox_db.still_untold
        self.holding = trio.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection, keys: Sequence[DeliveryKey]) -> list[DeliveryKey]:
        untold = self.real(conn, keys)
        if not self.holding.is_set():
            trio.from_thread.run_sync(self.holding.set)
            self.release.wait(SLOW_WAIT)  # bounded: a failing test cannot hang the store
        return untold


async def test_a_sweep_whose_untold_read_outlives_the_call_timeout_still_tells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    dead = untold_expired(tmp_path)
    held = HeldUntoldRead()
    monkeypatch.setattr(outbox_db, "still_untold", held)
    async with outbox_parts(tmp_path) as parts:
        watch, _ = await parts.hub.subscribe(16)
        await parts.start_outbox()
        with trio.fail_after(SLOW_WAIT):
            await held.holding.wait()  # the start's sweep reads, its answer held
        await trio.testing.wait_all_tasks_blocked()  # the start's other calls are answered
        mock_clock.jump(STORE_CALL_TIMEOUT + 1)
        await trio.testing.wait_all_tasks_blocked()  # the sweep's wait is past its deadline
        held.release.set()
        mock_clock.rate = 1  # the clock runs again: the waits below are bounded
        with trio.fail_after(SLOW_WAIT):
            async for event in watch:
                if isinstance(event, Event) and event.kind == "message_dead":
                    break
            await store_quiet(parts.store, SLOW_WAIT)  # marked told
        key = dead[0][0]
        assert event.data == {"id": key.outbox_id, "recipient": key.recipient, "error": EXPIRED}
        assert await stored_untold(parts) == []
