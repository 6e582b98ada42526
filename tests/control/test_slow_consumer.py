"""A connection that stops reading is cut off past the lag limit; nobody else notices."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshactors.actors import Broadcast
from meshactors.control import event_stream
from meshactors.daemon.services import Services
from meshactors.ops import system_ops


async def test_subscriber_overflow_is_signalled_without_reading() -> None:
    hub = Broadcast[int]()
    sub = hub.subscribe(2, lag_limit=3)
    for item in range(5):
        hub.publish(item)
    assert not sub.overflowed.is_set()  # 2 queued, 3 skipped: at the limit, not past it
    hub.publish(5)
    assert sub.overflowed.is_set()


async def test_a_stalled_event_reader_is_disconnected_and_others_are_served(
    daemon: Services, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system_ops, "LAG_DISCONNECT_LIMIT", 100)
    assert event_stream.LAG_DISCONNECT_LIMIT > 100  # only this connection's limit is lowered
    stalled = await connect()
    assert (await stalled.call("events_subscribe"))["ok"]
    healthy = await connect()
    padding = "x" * 200
    with trio.fail_after(30):
        while "client c1" in daemon.tree.children["control"].children:
            for _ in range(500):
                daemon.events.publish("test_noise", {"padding": padding})
            assert (await healthy.call("status"))["ok"] is True
    with trio.fail_after(30):
        while True:  # the stalled side finds its queued bytes, then the end of the stream
            chunk = await stalled.stream.receive_some(1 << 20)
            if not chunk:
                break
    assert (await healthy.call("status"))["data"]["clients"] == 1
