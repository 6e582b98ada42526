"""The inbox: dedupe by (network, sender, client_message_id) and oldest-first cursor paging."""

import sqlite3
from typing import Any

import pytest

from meshactors.store.inbox import InboxMessage, page, store_message
from meshactors.wire.ipc import MAX_PAGE


def receive(conn: sqlite3.Connection, **changes: Any) -> tuple[InboxMessage, bool]:
    fields: dict[str, Any] = {
        "network": "net1",
        "sender": "dev-a",
        "client_message_id": "cm-1",
        "message": "hello",
        "meta": {"k": [1, 2]},
        "priority": "next",
        "reply_to_id": None,
        "sent_at": 900,
        "now_ms": 1000,
    }
    fields.update(changes)
    return store_message(conn, **fields)


def test_a_new_message_is_stored(conn: sqlite3.Connection) -> None:
    stored, fresh = receive(conn, reply_to_id="m0")
    assert fresh
    assert stored == InboxMessage(
        seq=stored.seq,
        network="net1",
        sender="dev-a",
        client_message_id="cm-1",
        message="hello",
        meta={"k": [1, 2]},
        priority="next",
        reply_to_id="m0",
        sent_at=900,
        received_at=1000,
    )
    assert page(conn, limit=10, cursor=None)[0] == [stored]  # what was written, read back


def test_a_redelivery_returns_the_first_copy(conn: sqlite3.Connection) -> None:
    first, _ = receive(conn)
    again, fresh = receive(conn, message="tampered", now_ms=2000)
    assert not fresh
    assert again == first
    assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 1


def test_the_same_id_from_another_sender_or_network_is_a_new_message(
    conn: sqlite3.Connection,
) -> None:
    receive(conn)
    assert receive(conn, sender="dev-b")[1]
    assert receive(conn, network="net2")[1]


def test_paging_walks_oldest_first_with_the_cursor(conn: sqlite3.Connection) -> None:
    stored = [receive(conn, client_message_id=f"cm-{i}")[0] for i in range(5)]
    first, cursor, _ = page(conn, limit=2, cursor=None)
    assert first == stored[:2]
    assert cursor == stored[1].seq
    second, cursor, _ = page(conn, limit=2, cursor=cursor)
    assert second == stored[2:4]
    third, cursor, more = page(conn, limit=2, cursor=cursor)
    assert not more  # short: the end, for now
    assert third == stored[4:]
    assert page(conn, limit=2, cursor=cursor) == ([], cursor, False)
    later = receive(conn, client_message_id="cm-late")[0]
    assert page(conn, limit=2, cursor=cursor) == ([later], later.seq, False)


def test_a_filtered_poll_that_matches_nothing_moves_past_what_it_read(
    conn: sqlite3.Connection,
) -> None:
    # Else every poll for a quiet sender walks the whole inbox after the cursor again.
    others = [receive(conn, client_message_id=f"o{i}", sender="dev-b")[0] for i in range(50)]
    found, cursor, _ = page(conn, sender="dev-a", limit=10, cursor=None)
    assert (found, cursor) == ([], others[-1].seq)
    mine = receive(conn, client_message_id="m1")[0]
    receive(conn, client_message_id="o-late", sender="dev-b")
    assert page(conn, sender="dev-a", limit=10, cursor=cursor) == ([mine], mine.seq + 1, False)


def test_an_empty_inbox_pages_to_nothing(conn: sqlite3.Connection) -> None:
    assert page(conn, limit=10, cursor=None) == ([], None, False)


def test_paging_filters_by_network_sender_and_received_time(conn: sqlite3.Connection) -> None:
    a_old = receive(conn, client_message_id="1", now_ms=100)[0]
    b_net2 = receive(conn, client_message_id="2", network="net2", now_ms=200)[0]
    b_new = receive(conn, client_message_id="3", sender="dev-b", now_ms=300)[0]
    assert page(conn, network="net1", limit=10, cursor=None)[0] == [a_old, b_new]
    assert page(conn, sender="dev-b", limit=10, cursor=None)[0] == [b_new]
    assert page(conn, since_ms=200, limit=10, cursor=None)[0] == [b_net2, b_new]
    assert page(conn, network="net2", sender="dev-a", limit=10, cursor=None)[0] == [b_net2]


def test_the_page_size_is_capped(conn: sqlite3.Connection) -> None:
    for i in range(MAX_PAGE + 1):
        receive(conn, client_message_id=str(i))
    with pytest.raises(ValueError, match=f"limit must be 1-{MAX_PAGE}"):
        page(conn, limit=MAX_PAGE + 1, cursor=None)  # refused, not cut
    messages, cursor, more = page(conn, limit=MAX_PAGE, cursor=None)
    assert (len(messages), more) == (MAX_PAGE, True)
    rest, _, more = page(conn, limit=MAX_PAGE, cursor=cursor)
    assert (len(rest), more) == (1, False)


def test_a_non_positive_limit_is_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="limit"):
        page(conn, limit=0, cursor=None)
