"""A received message whose store call takes longer than STORE_CALL_TIMEOUT is stored all the
same once the store gets to it, so its `message` event is published then: giving the call up
would lose the event for good, as the sender's redelivery is answered `duplicate`, which
publishes nothing. A sweep whose read of the untold deaths takes as long tells them once the
store answers, instead of crashing the outbox."""

from __future__ import annotations

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
from meshactors.store.outbox import EXPIRED
from tests.daemon.outbox_parts import (
    HeldStoreCall,
    outbox_parts,
    stored_untold,
    untold_expired,
)
from tests.support import store_quiet

SLOW_WAIT = 10.0  # seconds (real, once the clock runs) for the events the test waits for
SLOW_KEY = "slow-store"  # the message whose first store call outlives STORE_CALL_TIMEOUT


def _msg(key: str) -> Msg:
    """A durable message from a peer, under `key`."""
    return Msg(key, key, "m", None, "next", None, wall_ms())


async def _past_the_deadline(held: HeldStoreCall, clock: trio.testing.MockClock) -> None:
    """Once `held` holds, move the clock past STORE_CALL_TIMEOUT while the store holds it, then
    release it and let the clock run (the waits that follow are bounded)."""
    with trio.fail_after(SLOW_WAIT):
        await held.holding.wait()
    await trio.testing.wait_all_tasks_blocked()  # every call made meanwhile waits for the store
    clock.jump(STORE_CALL_TIMEOUT + 1)
    await trio.testing.wait_all_tasks_blocked()  # every wait is past its deadline
    held.release.set()
    clock.rate = 1


async def test_a_store_slower_than_the_call_timeout_still_tells_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    held = HeldStoreCall.hold(
        monkeypatch,
        outbox_module,
        "store_received",
        lambda params, _: any(i.frame.client_message_id == SLOW_KEY for i in params["batch"]),
    )
    async with outbox_parts(tmp_path) as parts:
        watch, _ = await parts.hub.subscribe(16)
        outbox = await parts.start_outbox()
        # the start's calls are done: none waits on the jump
        await store_quiet(parts.store, SLOW_WAIT)
        outbox._queue_received("net1", "dev-a", [_msg(SLOW_KEY)])
        await _past_the_deadline(held, mock_clock)
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


async def test_a_sweep_whose_untold_read_outlives_the_call_timeout_still_tells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    dead = untold_expired(tmp_path)
    held = HeldStoreCall.hold(monkeypatch, outbox_db, "still_untold")
    async with outbox_parts(tmp_path) as parts:
        watch, _ = await parts.hub.subscribe(16)
        await parts.start_outbox()
        await _past_the_deadline(held, mock_clock)  # the start's sweep's read
        with trio.fail_after(SLOW_WAIT):
            async for event in watch:
                if isinstance(event, Event) and event.kind == "message_dead":
                    break
            await store_quiet(parts.store, SLOW_WAIT)  # marked told
        key = dead[0][0]
        assert event.data == {"id": key.outbox_id, "recipient": key.recipient, "error": EXPIRED}
        assert await stored_untold(parts) == []
