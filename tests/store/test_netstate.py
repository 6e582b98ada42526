"""The replicated state map's rows: saved entries load back, a save keeps the winning write
whatever order saves come in, and a purge forgets them."""

import sqlite3
from pathlib import Path

from meshactors.netstate.entry import Entry
from meshactors.netstate.hlc import Stamp
from meshactors.netstate.store import load_state, save_state
from meshactors.store.db import open_database
from meshactors.store.networks import delete_network, save_network

A, B = "a" * 52, "b" * 52


def test_entries_survive_a_reopen(conn: sqlite3.Connection, db_path: Path) -> None:
    written = [
        Entry.write("theme", {"dark": True}, Stamp(5, 1), A),
        Entry.tombstone("gone", Stamp(6, 0), B),
    ]
    save_state(conn, "net", written)
    conn.close()
    again = open_database(db_path)
    try:
        assert sorted(load_state(again, "net"), key=lambda e: e.key) == sorted(
            written, key=lambda e: e.key
        )
        assert load_state(again, "other") == []
    finally:
        again.close()


def test_a_save_never_replaces_a_later_write(conn: sqlite3.Connection) -> None:
    by_b = Entry.write("k", 1, Stamp(5, 0), B)
    by_a = Entry.write("k", 2, Stamp(5, 0), A)  # the same stamp: the larger author id wins
    later = Entry.tombstone("k", Stamp(5, 1), A)
    save_state(conn, "net", [later])
    save_state(conn, "net", [by_b, by_a])
    assert load_state(conn, "net") == [later]
    save_state(conn, "other", [by_b, by_a])
    save_state(conn, "other", [by_a])
    assert load_state(conn, "other") == [by_b]


def test_purge_forgets_the_state_and_a_plain_remove_keeps_it(conn: sqlite3.Connection) -> None:
    for network in ("kept", "purged"):
        save_network(conn, network, {}, 1)
        save_state(conn, network, [Entry.write("k", 1, Stamp(1, 0), A)])
    delete_network(conn, "kept", purge=False)
    delete_network(conn, "purged", purge=True)
    assert len(load_state(conn, "kept")) == 1
    assert load_state(conn, "purged") == []
