"""A received message whose store call takes longer than STORE_CALL_TIMEOUT is stored all the
same once the store gets to it, so its `message` event is published then: giving the call up
would lose the event for good, as the sender's redelivery is answered `duplicate`, which
publishes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors.clock import wall_ms
from meshactors.daemon import outbox as outbox_module
from meshactors.network.message_frames import Msg
from meshactors.store.actor import STORE_CALL_TIMEOUT
from meshactors.store.events import Event
from tests.daemon.outbox_parts import outbox_parts
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
