"""The replicated state map of each network, kept across restarts: one row per key."""

import sqlite3
from collections.abc import Sequence

from meshactors.netstate.entry import Entry
from meshactors.netstate.hlc import Stamp
from meshactors.store.db import immediate


def load_state(conn: sqlite3.Connection, network: str) -> list[Entry]:
    """Every entry of `network`'s map, tombstones included."""
    rows = conn.execute(
        "SELECT key, value_json, deleted, wall, counter, author FROM netstate WHERE network = ?",
        (network,),
    )
    return [
        Entry(key, value_json, bool(deleted), Stamp(wall, counter), author)
        for key, value_json, deleted, wall, counter, author in rows
    ]


def save_state(
    conn: sqlite3.Connection,
    network: str,
    entries: Sequence[Entry],
    expired_before: int | None = None,
) -> None:
    """Merge entries into `network`'s rows: a row changes only for an entry that beats it (the
    order of `Entry.rank`), so saves that reach the database out of order still keep the
    winner. With `expired_before` (wall ms), tombstones stamped before it are then deleted."""
    with immediate(conn):
        conn.executemany(
            "INSERT INTO netstate (network, key, value_json, deleted, wall, counter, author)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (network, key) DO UPDATE SET value_json = excluded.value_json,"
            " deleted = excluded.deleted, wall = excluded.wall, counter = excluded.counter,"
            " author = excluded.author"
            " WHERE (excluded.wall, excluded.counter, excluded.author, excluded.deleted,"
            " excluded.value_json) > (wall, counter, author, deleted, value_json)",
            [
                (network, e.key, e.value_json, e.deleted, e.stamp.wall, e.stamp.counter, e.by)
                for e in entries
            ],
        )
        if expired_before is not None:
            conn.execute(
                "DELETE FROM netstate WHERE network = ? AND deleted AND wall < ?",
                (network, expired_before),
            )
