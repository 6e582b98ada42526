"""save_roster: several roster entries in one transaction, all or none."""

from __future__ import annotations

import sqlite3

import pytest

from meshactors.store.networks import (
    RosterEntry,
    UnknownNetwork,
    roster,
    save_network,
    save_roster,
    set_roster_state,
)


def test_saves_every_entry_keeping_known_labels(conn: sqlite3.Connection) -> None:
    save_network(conn, "net1", {"id": "net1"}, 1)
    set_roster_state(conn, "net1", "dev-a", "pending", "laptop", 5)
    save_roster(
        conn,
        [
            RosterEntry("net1", "dev-a", None, "approved", 10),
            RosterEntry("net1", "dev-b", "desk", "approved", 11),
        ],
    )
    assert roster(conn, "net1") == [
        RosterEntry("net1", "dev-a", "laptop", "approved", 10),
        RosterEntry("net1", "dev-b", "desk", "approved", 11),
    ]


def test_an_unknown_network_saves_none_of_them(conn: sqlite3.Connection) -> None:
    save_network(conn, "net1", {"id": "net1"}, 1)
    with pytest.raises(UnknownNetwork):
        save_roster(
            conn,
            [
                RosterEntry("net1", "dev-a", None, "approved", 10),
                RosterEntry("gone", "dev-b", None, "approved", 11),
            ],
        )
    assert roster(conn, "net1") == []
