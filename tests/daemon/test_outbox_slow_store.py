"""A store slower than STORE_CALL_TIMEOUT delays the outbox's own work and crashes nothing:
every store call of the outbox waits for the store however long it takes. A received message
whose store call takes that long is stored all the same, so its `message` event is published
then (giving the call up would lose the event for good: the sender's redelivery is answered
`duplicate`, which publishes nothing); a sweep whose read of the untold deaths takes as long
tells them once the store answers; each background call so slow leaves the outbox running.
A crash of the store ends such a wait at once: the outbox restarts after it."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import ActorState
from meshactors.clock import wall_ms
from meshactors.daemon import outbox as outbox_module
from meshactors.daemon.outbox import PEER_ACTIVE
from meshactors.network.message_frames import Msg
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import STORE_CALL_TIMEOUT
from meshactors.store.events import Event
from meshactors.store.outbox import EXPIRED
from tests.daemon.outbox_parts import (
    HeldStoreCall,
    OutboxParts,
    outbox_parts,
    past_the_deadline,
    stops_seen,
    stored_untold,
    untold_expired,
)
from tests.support import store_quiet

SLOW_WAIT = 10.0  # seconds (real, once the clock runs) for the events the test waits for
SLOW_KEY = "slow-store"  # the message whose first store call outlives STORE_CALL_TIMEOUT


def _msg(key: str) -> Msg:
    """A durable message from a peer, under `key`."""
    return Msg(key, key, "m", None, "next", None, wall_ms())


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
        await past_the_deadline(held, mock_clock)
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
        await past_the_deadline(held, mock_clock)  # the start's sweep's read
        with trio.fail_after(SLOW_WAIT):
            async for event in watch:
                if isinstance(event, Event) and event.kind == "message_dead":
                    break
            await store_quiet(parts.store, SLOW_WAIT)  # marked told
        key = dead[0][0]
        assert event.data == {"id": key.outbox_id, "recipient": key.recipient, "error": EXPIRED}
        assert await stored_untold(parts) == []


def _nothing(_: object) -> None:
    """No setup: the outbox's start makes the call."""


def _peer_back(parts: OutboxParts) -> None:
    """A peer is active again: the outbox makes what waits out a backoff for it due now."""
    parts.hub.publish(PEER_ACTIVE, {"network": "net1", "device_id": "dev-a"})


@attrs.frozen
class SlowBackgroundCall:
    """A store function the outbox calls for its own work (`module.name`), with what has it
    called: `before` its start (given the state directory), `after` (given the parts)."""

    module: ModuleType
    name: str
    before: Callable[[Path], object] = _nothing
    after: Callable[[OutboxParts], None] = _nothing


BACKGROUND_CALLS = [
    SlowBackgroundCall(outbox_db, "recover_inflight"),  # the start's recovery
    SlowBackgroundCall(outbox_db, "expire_pending"),  # the TTL sweep
    SlowBackgroundCall(outbox_module, "prune_step"),  # pruning
    SlowBackgroundCall(outbox_db, "delivery_counts"),  # a pass with nothing to claim
    SlowBackgroundCall(outbox_db, "mark_told", before=untold_expired),  # a death told
    SlowBackgroundCall(outbox_db, "due_now_to_peers", after=_peer_back),  # backoffs cut
]


@pytest.mark.parametrize("call", BACKGROUND_CALLS, ids=lambda call: call.name)
async def test_a_background_store_call_slower_than_the_call_timeout_crashes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mock_clock: trio.testing.MockClock,
    call: SlowBackgroundCall,
) -> None:
    call.before(tmp_path)
    held = HeldStoreCall.hold(monkeypatch, call.module, call.name)
    async with outbox_parts(tmp_path) as parts:
        node = await parts.supervise_outbox()
        call.after(parts)
        await past_the_deadline(held, mock_clock)
        await store_quiet(parts.store, SLOW_WAIT)  # the outbox took the answer and went on
        assert (node.state, node.restarts) == (ActorState.RUNNING, 0)


def _held_up(conn: sqlite3.Connection) -> None:
    """A call that keeps the store busy while the test holds it."""


async def test_a_store_crash_ends_the_outbox_s_wait_for_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    held = HeldStoreCall(_held_up)
    stopped = stops_seen(monkeypatch)
    async with outbox_parts(tmp_path) as parts:

        async def busy() -> None:
            await parts.store.call(held, what="test: keep the store busy", timeout=math.inf)

        parts.nursery.start_soon(busy)
        with trio.fail_after(SLOW_WAIT):
            await held.holding.wait()
        node = await parts.supervise_outbox()  # its start's recovery waits behind the held call
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(STORE_CALL_TIMEOUT + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert (node.state, node.restarts) == (ActorState.RUNNING, 0)  # it still waits
        assert parts.tree_node.children["store"].request_crash("test")
        held.release.set()  # the store answers the held call, then crashes
        with trio.fail_after(SLOW_WAIT):
            await stopped.wait()  # the store's exit stops the outbox to restart it
        await trio.testing.wait_all_tasks_blocked()
        # stopped with the clock still: its wait for the store ended at once, not at a deadline
        assert (node.state, node.restarts) == (ActorState.RESTARTING, 1)
        mock_clock.rate = 1  # the restarts' backoffs run
        with trio.fail_after(SLOW_WAIT):
            while node.state is not ActorState.RUNNING:
                await trio.testing.wait_all_tasks_blocked()
            await store_quiet(parts.store, SLOW_WAIT)
        assert node.restarts == 1
