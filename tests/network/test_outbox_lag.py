"""A peer that comes back while the outbox's event watch lags (its `peer_active` skipped) still
has its backoffs cut: on the lag the outbox cuts those of every peer active by then, read from
the network, not from the events it missed."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Collection

import pytest
import trio
import trio.testing

from meshactors.clock import wall_ms
from meshactors.daemon import outbox as outbox_module
from meshactors.daemon.outbox import PEER_ACTIVE, Outbox
from meshactors.store.db import immediate
from tests.network.conftest import NET, WAIT, Mesh, active_pair
from tests.network.test_delivery import delivered

BACKOFF_MS = 3_600_000  # what the send's failed attempts left it to wait: an hour


def _backed_off(conn: sqlite3.Connection, row_id: str, until_ms: int) -> None:
    """Leave the send's delivery as eight failed attempts could: due again only at `until_ms`."""
    with immediate(conn):
        conn.execute(
            "UPDATE deliveries SET attempts = 8, next_attempt_at = ? WHERE outbox_id = ?",
            (until_ms, row_id),
        )


async def test_a_peer_back_while_the_watch_lags_has_its_backoffs_cut(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "WATCH_CAPACITY", 1)  # one event unread and it lags
    monkeypatch.setattr(outbox_module, "PEER_WORK_QUEUE", 1)
    a, b = await active_pair(mesh)
    await b.stop()
    await a.wait_status(b, "offline")
    sent = await a.call("send", network=NET, to=b.device_id, message="backed off")
    await a.services.store.call(
        functools.partial(_backed_off, row_id=sent["id"], until_ms=wall_ms() + BACKOFF_MS),
        what="test: back the delivery off",
    )

    # Stall a's watch: the first peer work job it hands over waits, and the one after it
    # fills the peer work channel, so it waits to hand over a third.
    real_due_now = Outbox._due_now
    holding, release = trio.Event(), trio.Event()

    async def held_due_now(
        outbox: Outbox,
        network_id: str,
        peers: Collection[str],
        pause: Callable[[float], Awaitable[object]],
    ) -> None:
        if not holding.is_set():
            holding.set()
            await release.wait()
        await real_due_now(outbox, network_id, peers, pause)

    def stand_in_back(n: int) -> None:
        a.services.events.publish(PEER_ACTIVE, {"network": NET, "device_id": f"stand-in-{n}"})

    monkeypatch.setattr(Outbox, "_due_now", held_due_now)
    stand_in_back(0)
    with trio.fail_after(WAIT):
        await holding.wait()
    for n in (1, 2):  # one at a time, so the watch reads each: the first queued, then it waits
        stand_in_back(n)
        await trio.testing.wait_all_tasks_blocked()
    a.services.events.publish("test_filler", {})  # its one place taken: the next is skipped

    back = a.last_event_id
    b = await mesh.daemon("b")
    await a.wait_status(b, "active", after=back)  # skipped by a's stalled watch
    release.set()
    await delivered(a, sent["id"])
