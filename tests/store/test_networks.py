"""Networks, roster and settings survive a restart; delete and purge remove the right rows."""

import sqlite3
from pathlib import Path

import pytest

from meshactors.store.db import MIGRATIONS, open_database
from meshactors.store.inbox import page, store_message
from meshactors.store.networks import (
    GLOBAL,
    Forgotten,
    RosterEntry,
    UnknownNetwork,
    delete_network,
    get_settings,
    load_networks,
    put_setting,
    remove_roster,
    roster,
    save_network,
    set_roster_state,
    settle_role,
)
from meshactors.store.outbox import (
    DeliveryKey,
    accept,
    list_rows,
    mark_delivered_many,
    mark_failed,
    mark_inflight,
)
from tests.store.test_outbox import T0, send


def populate(conn: sqlite3.Connection, network: str) -> None:
    """A network with a roster entry, a setting, an inbox message and an outbox send."""
    save_network(conn, network, {"broker": "ws://127.0.0.1:1"}, 10)
    set_roster_state(conn, network, "dev-a", "approved", "laptop", 20)
    put_setting(conn, network, "capabilities", ["chat"])
    store_message(
        conn,
        network=network,
        sender="dev-a",
        client_message_id="in-1",
        message="hi",
        meta=None,
        priority="next",
        reply_to_id=None,
        sent_at=1,
        now_ms=2,
    )
    accept(
        conn,
        network=network,
        recipients=["dev-a"],
        destination_kind="peer",
        destination_ref="dev-a",
        message="yo",
        priority="next",
        meta=None,
        reply_to_id=None,
        client_message_id="out-1",
        now_ms=3,
    )


def leftovers(conn: sqlite3.Connection, network: str) -> dict[str, int]:
    """How many rows each table still holds for the network."""
    tables = ("roster", "local_settings", "inbox", "outbox")
    counts = {
        table: conn.execute(
            f"SELECT count(*) FROM {table} WHERE network = ?", (network,)
        ).fetchone()[0]
        for table in tables
    }
    counts["deliveries"] = conn.execute(
        "SELECT count(*) FROM deliveries d JOIN outbox o ON o.id = d.outbox_id WHERE o.network = ?",
        (network,),
    ).fetchone()[0]
    return counts


def test_networks_roster_and_settings_survive_a_restart(db_path: Path) -> None:
    conn = open_database(db_path)
    save_network(conn, "net1", {"broker": "ws://a", "tags": ["x"]}, 100)
    save_network(conn, "net2", {"broker": "ws://b"}, 200)
    set_roster_state(conn, "net1", "dev-a", "pending", "laptop", 300)
    put_setting(conn, GLOBAL, "profile", {"name": "me", "bio": "é"})
    put_setting(conn, "net1", "capabilities", ["chat", "files"])
    conn.close()

    conn = open_database(db_path)
    assert load_networks(conn) == [
        ("net1", {"broker": "ws://a", "tags": ["x"]}),
        ("net2", {"broker": "ws://b"}),
    ]
    assert roster(conn, "net1") == [RosterEntry("net1", "dev-a", "laptop", "pending", 300)]
    assert get_settings(conn, GLOBAL) == {"profile": {"name": "me", "bio": "é"}}
    assert get_settings(conn, "net1") == {"capabilities": ["chat", "files"]}
    conn.close()


def test_saving_a_known_network_replaces_its_config_and_keeps_its_place(
    conn: sqlite3.Connection,
) -> None:
    save_network(conn, "net1", {"v": 1}, 100)
    save_network(conn, "net2", {"v": 1}, 200)
    save_network(conn, "net1", {"v": 2}, 300)
    assert load_networks(conn) == [("net1", {"v": 2}), ("net2", {"v": 1})]
    assert conn.execute("SELECT added_at FROM networks WHERE id = 'net1'").fetchone()[0] == 100


def test_roster_state_changes_keep_the_label_unless_given(conn: sqlite3.Connection) -> None:
    save_network(conn, "net1", {}, 1)
    set_roster_state(conn, "net1", "dev-b", "pending", "desk", 10)
    set_roster_state(conn, "net1", "dev-a", "pending", None, 11)
    set_roster_state(conn, "net1", "dev-b", "approved", None, 12)
    set_roster_state(conn, "net1", "dev-a", "denied", "phone", 13)
    assert roster(conn, "net1") == [
        RosterEntry("net1", "dev-a", "phone", "denied", 13),
        RosterEntry("net1", "dev-b", "desk", "approved", 12),
    ]
    set_roster_state(conn, "net1", "dev-b", "approved", None, 14, role="control-plane")
    set_roster_state(conn, "net1", "dev-b", "approved", None, 15)
    assert roster(conn, "net1")[1] == RosterEntry(
        "net1", "dev-b", "desk", "approved", 15, "control-plane"
    )
    assert remove_roster(conn, "net1", "dev-a")
    assert not remove_roster(conn, "net1", "dev-a")
    assert [e.device_id for e in roster(conn, "net1")] == ["dev-b"]


def test_roster_changes_need_a_known_network_and_state(conn: sqlite3.Connection) -> None:
    with pytest.raises(UnknownNetwork, match="nope"):
        set_roster_state(conn, "nope", "dev-a", "approved", None, 1)
    save_network(conn, "net1", {}, 1)
    with pytest.raises(ValueError, match="roster state"):
        set_roster_state(conn, "net1", "dev-a", "maybe", None, 1)
    assert roster(conn, "net1") == []


def test_put_setting_overwrites(conn: sqlite3.Connection) -> None:
    put_setting(conn, "net1", "capabilities", ["a"])
    put_setting(conn, "net1", "capabilities", ["b"])
    put_setting(conn, "net1", "title", None)
    assert get_settings(conn, "net1") == {"capabilities": ["b"], "title": None}
    assert get_settings(conn, "net2") == {}


def test_delete_without_purge_forgets_the_config_only(conn: sqlite3.Connection) -> None:
    populate(conn, "net1")
    assert delete_network(conn, "net1", purge=False) == Forgotten(known=True, purged_unsent=0)
    assert load_networks(conn) == []
    assert leftovers(conn, "net1") == {
        "roster": 1,
        "local_settings": 1,
        "inbox": 1,
        "outbox": 1,
        "deliveries": 1,
    }
    assert len(page(conn, network="net1", limit=10, cursor=None)[0]) == 1
    save_network(conn, "net1", {"broker": "ws://127.0.0.1:1"}, 30)  # a rejoin
    assert roster(conn, "net1") == [RosterEntry("net1", "dev-a", "laptop", "approved", 20)]


def test_purge_removes_everything_of_that_network_only(conn: sqlite3.Connection) -> None:
    populate(conn, "net1")
    populate(conn, "net2")
    put_setting(conn, GLOBAL, "profile", {"name": "me"})
    # populate's one send is pending: nothing would tell of it but this count
    assert delete_network(conn, "net1", purge=True) == Forgotten(known=True, purged_unsent=1)
    assert leftovers(conn, "net1") == dict.fromkeys(
        ("roster", "local_settings", "inbox", "outbox", "deliveries"), 0
    )
    assert leftovers(conn, "net2") == dict.fromkeys(
        ("roster", "local_settings", "inbox", "outbox", "deliveries"), 1
    )
    assert [name for name, _ in load_networks(conn)] == ["net2"]
    assert get_settings(conn, GLOBAL) == {"profile": {"name": "me"}}
    assert [r.network for r in list_rows(conn, status=None, network=None, limit=10)[0]] == ["net2"]


def test_purge_counts_the_sends_it_deletes_undelivered(conn: sqlite3.Connection) -> None:
    save_network(conn, "net1", {"broker": "ws://127.0.0.1:1"}, 10)
    ids = {
        status: send(conn, network="net1", client_message_id=status).id
        for status in ("pending", "inflight", "done", "dead")
    }
    assert mark_inflight(conn, [DeliveryKey(ids["inflight"], "dev-a")], T0)
    done = DeliveryKey(ids["done"], "dev-a")
    mark_inflight(conn, [done], T0)
    mark_delivered_many(conn, [done], T0)
    mark_failed(conn, ids["dead"], "dev-a", error_code="rejected", permanent=True, now_ms=T0)
    shown, _ = list_rows(conn, status=None, network="net1", limit=10)
    assert sorted(row.status for row in shown) == ["dead", "done", "inflight", "pending"]
    assert delete_network(conn, "net1", purge=True) == Forgotten(known=True, purged_unsent=2)


def test_purging_an_already_deleted_network_removes_its_leftovers(
    conn: sqlite3.Connection,
) -> None:
    populate(conn, "net1")
    delete_network(conn, "net1", purge=False)
    assert delete_network(conn, "net1", purge=True) == Forgotten(known=False, purged_unsent=1)
    assert sum(leftovers(conn, "net1").values()) == 0


def test_a_version_1_database_keeps_its_roster_and_no_longer_cascades(db_path: Path) -> None:
    old = sqlite3.connect(db_path, isolation_level=None)
    old.execute("PRAGMA foreign_keys = ON")
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO networks VALUES ('net1', '{}', 1)")
    old.execute("INSERT INTO roster VALUES ('net1', 'dev-a', 'laptop', 'approved', 2)")
    old.close()

    conn = open_database(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert roster(conn, "net1") == [RosterEntry("net1", "dev-a", "laptop", "approved", 2)]
    delete_network(conn, "net1", purge=False)
    assert [entry.device_id for entry in roster(conn, "net1")] == ["dev-a"]
    with pytest.raises(UnknownNetwork):
        set_roster_state(conn, "net1", "dev-a", "denied", None, 3)


def test_the_declared_role_is_kept_for_later_starts(conn: sqlite3.Connection) -> None:
    roles = ("daemon", "service", "control-plane")
    assert settle_role(conn, None, roles) == "daemon"
    assert settle_role(conn, "service", roles) == "service"
    assert settle_role(conn, None, roles) == "service"
    put_setting(conn, GLOBAL, "role", "emperor")  # not a role (any more): the default
    assert settle_role(conn, None, roles) == "daemon"
