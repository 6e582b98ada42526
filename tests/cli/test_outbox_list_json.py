"""`outbox list --json` prints the op's page with its cursor, so a script pages to the end."""

from __future__ import annotations

import functools
import json
import sqlite3

import trio

from meshactors.clock import wall_ms
from meshactors.daemon.services import Services
from meshactors.store import outbox as outbox_db
from tests.store.test_outbox import request as outbox_request
from tests.support import Home

LISTED_SENDS = 5  # rows in the outbox: three pages of two
LISTED_PAGE = 2


async def test_a_script_pages_outbox_list_json_to_its_end_by_next_cursor(
    daemon: Services,
) -> None:
    def fill(conn: sqlite3.Connection) -> list[str]:
        now = wall_ms()  # not yet expired: the outbox's TTL sweep, running beside, leaves them
        return [
            outbox_db.accept(
                conn, **outbox_request(client_message_id=f"listed-{n}", now_ms=now + n)
            ).id
            for n in range(LISTED_SENDS)
        ]

    newest_first = list(reversed(await daemon.store.call(fill, what="test: sends")))
    home = Home(daemon.paths.socket.parent)
    listing = ["outbox", "list", "--json", "--limit", str(LISTED_PAGE)]
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(LISTED_SENDS):  # a page at least each time, or the loop is stuck
        result = await trio.to_thread.run_sync(functools.partial(home.cli, *listing, *cursor))
        page = json.loads(result.stdout)
        assert set(page) == {"rows", "next_cursor"}
        assert result.stderr == ""  # no hint beside the JSON: the cursor is in it
        seen += [row["id"] for row in page["rows"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == newest_first  # each once, newest first, to the end
