"""A graceful stop that comes while the store commits what the outbox publishes events for
still publishes them: a stop cannot leave a received message without its `message` event
(the sender's redelivery after the restart, answered `duplicate`, would never publish it),
nor an acked delivery without its `message_delivered` (done, it is never sent again)."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.daemon import outbox as outbox_module
from meshactors.store import events as event_log
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair
from tests.network.test_delivery import delivered

HELD_KEY = "held-at-stop"  # the send whose store call the stop comes in


class HeldStoreCall:
    """Stands in for the outbox's store function `name`: the first call whose batch `holds`
    runs, says so, and then holds its answer in the store's thread until released."""

    def __init__(self, name: str, holds: Callable[[Sequence[Any]], bool]) -> None:
        self.real = getattr(outbox_module, name)
        self.holds = holds
        self.done = trio.Event()
        self.release = threading.Event()
        self.held = False

    def __call__(self, conn: sqlite3.Connection, batch: Sequence[Any], now_ms: int) -> Any:
        result = self.real(conn, batch, now_ms)
        if not self.held and self.holds(batch):
            self.held = True
            trio.from_thread.run_sync(self.done.set)
            self.release.wait(WAIT)  # bounded: a failing test cannot hang the store for ever
        return result


def _stops_seen(monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """An event set once a stop cancels the run of an outbox (any daemon's: the tests stop
    one at a time): the run is wrapped with a task beside it, in the outbox's scope, that
    waits for that cancel."""
    real = outbox_module.Outbox.run
    stopped = trio.Event()

    async def wait_for_the_stop() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    async def run(
        outbox: outbox_module.Outbox,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_the_stop)
            await real(outbox, task_status=task_status)

    monkeypatch.setattr(outbox_module.Outbox, "run", run)
    return stopped


async def _stop_while_held(daemon: Daemon, held: HeldStoreCall, stopped: trio.Event) -> None:
    """Stop `daemon` once its outbox waits for the held call, releasing it only once the stop
    (`stopped`: `_stops_seen`) has reached the outbox's wait."""
    with trio.fail_after(WAIT):
        await held.done.wait()
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
    held = HeldStoreCall(
        "store_received", lambda batch: any(i.frame.client_message_id == HELD_KEY for i in batch)
    )
    monkeypatch.setattr(outbox_module, "store_received", held)
    stopped = _stops_seen(monkeypatch)
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
    held = HeldStoreCall("record_settled", lambda batch: any(i.error is None for i in batch))
    monkeypatch.setattr(outbox_module, "record_settled", held)
    stopped = _stops_seen(monkeypatch)
    a, b = await active_pair(mesh)
    sent = await a.call("send", network=NET, to=b.device_id, message="m")
    await _stop_while_held(a, held, stopped)  # the delivery is done in a's outbox as the stop comes

    a = await mesh.daemon("a")
    logged = await _logged(a, "message_delivered", id=sent["id"])
    assert [data["recipient"] for data in logged] == [b.device_id]
