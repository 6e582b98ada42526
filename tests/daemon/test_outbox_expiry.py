"""A send whose peer never came back dies when it outlives its TTL, and each of its
deliveries is told with `message_dead` like any other that gives up, also when a backlog
holds more deliveries than the event hub's inbox and log queue."""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from meshactors.event_hub import HUB_INBOX, PERSIST_QUEUE
from meshactors.store import outbox as outbox_db
from meshactors.store.db import open_database
from meshactors.store.events import Event
from meshactors.store.outbox import EXPIRED, MAX_RECIPIENTS
from tests.daemon.outbox_parts import outbox_parts
from tests.daemon_tree import serving
from tests.store.test_outbox import send
from tests.support import LineClient

WAIT = 10.0  # seconds for the sweep at start and the replay


async def test_a_send_that_outlives_its_ttl_is_told_dead(tmp_path: Path) -> None:
    async with serving(tmp_path) as services:  # a first start makes the home
        database = services.paths.state_db
    with contextlib.closing(open_database(database)) as conn:
        old = send(conn, recipients=["dev-a", "dev-b"])  # accepted in 1970: long expired
    async with serving(tmp_path) as services:
        client = LineClient(await trio.open_unix_socket(str(services.paths.socket)))
        assert (await client.call("events_subscribe", since=0))["ok"]
        dead: set[str] = set()
        with trio.fail_after(WAIT):
            while len(dead) < 2:
                frame = await client.frame()
                if frame.get("kind") == "message_dead":
                    assert (frame["id"], frame["error"]) == (old.id, EXPIRED)
                    dead.add(frame["recipient"])
        assert dead == {"dev-a", "dev-b"}


async def test_a_sweep_that_kills_more_deliveries_than_the_hub_holds_tells_each_one(
    tmp_path: Path,
) -> None:
    database = tmp_path / "state.db"
    with contextlib.closing(open_database(database)) as conn:
        recipients = [f"dev-{n}" for n in range(MAX_RECIPIENTS)]
        # Twice what the hub's inbox or its log queue holds: the store writes the log 500
        # events a call, slower than a sweep left unpaced kills deliveries.
        for n in range(2 * max(HUB_INBOX, PERSIST_QUEUE) // MAX_RECIPIENTS + 1):
            send(conn, recipients=recipients, client_message_id=f"old-{n}")  # 1970: expired
        killed = outbox_db.delivery_counts(conn)["pending"]
    async with outbox_parts(tmp_path) as parts:
        hub = parts.hub
        watch, _ = await hub.subscribe(killed + 1)
        await parts.start_outbox()
        dead = 0
        with trio.fail_after(WAIT):
            while dead < killed:
                assert (hub.figures()["dropped"], hub.figures()["unlogged"]) == (0, 0)
                event = await watch.receive()
                assert isinstance(event, Event)
                dead += event.kind == "message_dead"
        await hub.flush()  # every event is in the log
        assert hub.figures()["unlogged"] == 0
