"""A graceful stop that comes while the store commits what the outbox publishes events for
still publishes them: a stop cannot leave a received message without its `message` event
(the sender's redelivery after the restart, answered `duplicate`, would never publish it),
nor an acked delivery without its `message_delivered` (done, it is never sent again)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.daemon import outbox as outbox_module
from meshactors.store import events as event_log
from tests.daemon.outbox_parts import HeldStoreCall, stops_seen
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair
from tests.network.test_delivery import delivered

HELD_KEY = "held-at-stop"  # the send whose store call the stop comes in


async def _stop_while_held(daemon: Daemon, held: HeldStoreCall, stopped: trio.Event) -> None:
    """Stop `daemon` once its outbox waits for the held call, releasing it only once the stop
    (`stopped`: `stops_seen`) has reached the outbox's wait."""
    with trio.fail_after(WAIT):
        await held.holding.wait()
        daemon.services.shutdown.ring()
        await stopped.wait()
        await trio.testing.wait_all_tasks_blocked()  # the cancel reached the outbox's wait
    held.release.set()
    await daemon.stop()


async def _logged(daemon: Daemon, kind: str, **match: Any) -> list[dict[str, Any]]:
    """The data of every `kind` event in the daemon's event log whose fields match."""
    await daemon.services.events.flush()
    logged = await daemon.services.store.call(
        functools.partial(event_log.since, event_id=0, limit=event_log.MAX_REPLAY),
        what="test: read the event log",
    )
    assert not logged.more
    return [
        e.data
        for e in logged.events
        if e.kind == kind and all(e.data.get(key) == value for key, value in match.items())
    ]


async def test_a_stop_while_received_messages_commit_still_publishes_their_events(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldStoreCall.hold(
        monkeypatch,
        outbox_module,
        "store_received",
        lambda params, _: any(i.frame.client_message_id == HELD_KEY for i in params["batch"]),
    )
    stopped = stops_seen(monkeypatch)
    a, b = await active_pair(mesh)
    sent = await a.call(
        "send", network=NET, to=b.device_id, message="m", client_message_id=HELD_KEY
    )
    await _stop_while_held(b, held, stopped)  # stored in b's inbox as the stop comes

    b = await mesh.daemon("b")  # a sends it again: b answers `duplicate`, which tells nothing
    await delivered(a, sent["id"])
    (message,) = (await b.call("inbox", limit=10))["messages"]
    logged = await _logged(b, "message", client_message_id=HELD_KEY)
    assert [data["seq"] for data in logged] == [message["seq"]]


async def test_a_stop_while_an_ack_is_recorded_still_publishes_its_delivery(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the only send's ack: the first acked attempt (error None) a records
    held = HeldStoreCall.hold(
        monkeypatch,
        outbox_module,
        "record_settled",
        lambda params, _: any(i.error is None for i in params["batch"]),
    )
    stopped = stops_seen(monkeypatch)
    a, b = await active_pair(mesh)
    sent = await a.call("send", network=NET, to=b.device_id, message="m")
    await _stop_while_held(a, held, stopped)  # the delivery is done in a's outbox as the stop comes

    a = await mesh.daemon("a")
    logged = await _logged(a, "message_delivered", id=sent["id"])
    assert [data["recipient"] for data in logged] == [b.device_id]
