"""A send whose peer never came back dies when it outlives its TTL, and each of its
deliveries is told with `message_dead` like any other that gives up."""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from meshactors.store.db import open_database
from meshactors.store.outbox import EXPIRED
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
