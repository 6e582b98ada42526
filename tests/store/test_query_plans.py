"""The plans of every statement the hot paths run are fixed: each uses the index that bounds it
by the work due, none scans outbox, deliveries, inbox or events whole (issue 22).

Each hot function runs against a real database file holding finished history (with and
without ANALYZE statistics); its statements are captured as SQLite runs them and explained.
"""

import functools
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshactors.daemon.outbox import claim_due
from meshactors.store import events, inbox, outbox, retention
from meshactors.store.db import open_database
from meshactors.store.events import Event
from meshactors.store.outbox import DeliveryKey
from tests.store.test_outbox import T0, request

HISTORY = 300  # finished sends (and inbox messages, events) in the database
BOUNDED_SCANS = ("json_each", "CONSTANT ROW", "(subquery")  # scans that are not of a table
PARTIAL_INDEXES = (
    "deliveries_due",
    "deliveries_pending",
    "deliveries_queue",
    "deliveries_inflight",
    "deliveries_untold",
)
ORDERED_WALKS = ("outbox_recent",)  # walked in ORDER BY order, so LIMIT ends the walk
WRITES = re.compile(r"^\s*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", re.IGNORECASE)


def _history(conn: sqlite3.Connection) -> None:
    """HISTORY delivered sends to two peers, inbox messages and events, plus pending work."""
    for i in range(HISTORY):
        sent = outbox.accept(conn, **request(client_message_id=f"old-{i}", now_ms=T0 + i))
        keys = [DeliveryKey(sent.id, "dev-a")]
        outbox.mark_inflight(conn, keys, T0 + i)
        outbox.mark_delivered_many(conn, keys, T0 + i)
        inbox.store_message(
            conn,
            network="net1",
            sender="dev-b",
            client_message_id=f"in-{i}",
            message="hi",
            meta=None,
            priority="next",
            reply_to_id=None,
            sent_at=T0 + i,
            now_ms=T0 + i,
        )
    events.append_batch(conn, [Event(i + 1, "x", {}, T0 + i) for i in range(HISTORY)])
    for i in range(5):
        outbox.accept(conn, **request(client_message_id=f"new-{i}", now_ms=T0 + HISTORY + i))


@pytest.fixture(params=[False, True], ids=["plain", "analyzed"])
def full(request: pytest.FixtureRequest, tmp_path: Path) -> sqlite3.Connection:
    conn = open_database(tmp_path / "state.db")
    _history(conn)
    if request.param:
        conn.execute("ANALYZE")
    return conn


def _statements(conn: sqlite3.Connection, call: Callable[[sqlite3.Connection], Any]) -> list[str]:
    """The statements `call` runs, as SQLite ran them (parameters expanded)."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        call(conn)
    finally:
        conn.set_trace_callback(None)
    return [sql for sql in seen if WRITES.match(sql)]


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


def _full_scans(plan: list[str]) -> list[str]:
    """Plan lines that visit a whole table: a SCAN that is not of a subquery or json_each,
    not of a partial index (bounded by the work it indexes), and not an in-order index walk
    that LIMIT ends (no temp b-tree re-sorts its output)."""
    ordered = not any("TEMP B-TREE" in line for line in plan)
    return [
        line
        for line in plan
        if line.startswith("SCAN ")
        and not any(ok in line for ok in BOUNDED_SCANS)
        and not any(f"INDEX {index}" in line for index in PARTIAL_INDEXES)
        and not (ordered and any(line.endswith(f"INDEX {index}") for index in ORDERED_WALKS))
    ]


NOW = T0 + HISTORY + 10
WINDOWS = {"dev-a": 64, "dev-c": 64}
HOT: dict[str, tuple[Callable[[sqlite3.Connection], Any], tuple[str, ...]]] = {
    "claim_due": (
        functools.partial(claim_due, network="net1", windows=WINDOWS, now_ms=NOW),
        ("deliveries_queue", "deliveries_pending"),
    ),
    "due_deliveries_all": (
        functools.partial(outbox.due_deliveries, now_ms=NOW, limit=10),
        ("deliveries_due",),
    ),
    "next_due_at": (
        functools.partial(outbox.next_due_at, network="net1", recipients=["dev-a"]),
        ("deliveries_pending",),
    ),
    "due_now_to_peers": (
        functools.partial(
            outbox.due_now_to_peers, network="net1", recipients=["dev-a", "dev-c"], now_ms=NOW
        ),
        ("deliveries_pending",),
    ),
    "delivery_counts": (outbox.delivery_counts, ("row_counts",)),
    "expire_pending": (
        functools.partial(outbox.expire_pending, now_ms=NOW + outbox.TTL_MS),
        ("outbox_by_status",),
    ),
    "recover_inflight": (
        functools.partial(outbox.recover_inflight, now_ms=NOW),
        ("deliveries_inflight",),
    ),
    "untold_deaths": (
        functools.partial(outbox.untold_deaths, limit=10),
        ("deliveries_untold",),
    ),
    "still_untold": (
        functools.partial(outbox.still_untold, keys=[DeliveryKey("x", "dev-a")]),
        ("sqlite_autoindex_deliveries_1",),
    ),
    "mark_told": (
        functools.partial(outbox.mark_told, keys=[DeliveryKey("x", "dev-a")], now_ms=NOW),
        (),
    ),
    "accept_repeat": (
        lambda conn: outbox.accept(conn, **request(client_message_id="old-1", now_ms=NOW)),
        ("sqlite_autoindex_outbox_2",),
    ),
    "list_all": (
        functools.partial(outbox.list_rows, status=None, network="net1", limit=20),
        ("outbox_recent",),
    ),
    "list_dead": (
        functools.partial(outbox.list_rows, status="dead", network=None, limit=20),
        ("outbox_by_status",),
    ),
    "list_dead_before": (
        functools.partial(
            outbox.list_rows, status="dead", network=None, limit=20, before=(T0 + 5, "0" * 26)
        ),
        ("outbox_by_status",),
    ),
    "list_all_before": (
        functools.partial(
            outbox.list_rows, status=None, network=None, limit=20, before=(T0 + 5, "0" * 26)
        ),
        ("outbox_recent",),
    ),
    "inbox_page": (
        functools.partial(inbox.page, sender="dev-b", limit=50, cursor=HISTORY - 10),
        ("INTEGER PRIMARY KEY",),
    ),
    "events_since": (
        functools.partial(events.since, event_id=HISTORY - 10, limit=50),
        ("INTEGER PRIMARY KEY",),
    ),
    "events_append": (
        lambda conn: events.append_batch(conn, [Event(HISTORY + 1, "x", {}, NOW)]),
        ("sqlite_autoindex_local_settings_1",),  # the log's count, read by its key
    ),
    **{
        f"prune_{part}_{rows}": (
            functools.partial(
                getattr(retention, f"prune_{part}"),
                retention=retention.Retention(days=1, rows=rows),
                now_ms=NOW + outbox.TTL_MS * 3,
            ),
            (index,),
        )
        for part, index in (
            ("outbox", "outbox_by_status"),
            ("inbox", "INTEGER PRIMARY KEY"),
            ("events", "INTEGER PRIMARY KEY"),
        )
        for rows in (10, 10_000)  # over the count, and only past the age
    },
}


@pytest.mark.parametrize("name", list(HOT))
def test_hot_queries_use_their_index_and_scan_no_table(full: sqlite3.Connection, name: str) -> None:
    call, indexes = HOT[name]
    plans = [(sql, _plan(full, sql)) for sql in _statements(full, call)]
    assert plans, f"{name} ran no statement"
    scans = [(sql, _full_scans(plan)) for sql, plan in plans if _full_scans(plan)]
    assert scans == [], f"{name} scans a whole table"
    text = "\n".join(line for _, plan in plans for line in plan)
    for index in indexes:
        assert index in text, f"{name} does not use {index}:\n{text}"
