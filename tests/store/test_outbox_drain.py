"""The drainer's store queries: due work for chosen recipients, the next due time, TTL expiry
of sends whose peer never came back, and per-status counts."""

import sqlite3

from meshactors.store import outbox
from tests.store.test_outbox import T0, send


def test_due_deliveries_keeps_only_the_given_recipients(conn: sqlite3.Connection) -> None:
    for i in range(3):
        send(conn, client_message_id=f"off-{i}", recipients=["offline"])
    online = send(conn, client_message_id="on", recipients=["online"])
    due = outbox.due_deliveries(conn, now_ms=T0, limit=1, recipients=["online"])
    assert [(d.outbox_id, d.recipient) for d in due] == [(online.id, "online")]
    assert len(outbox.due_deliveries(conn, now_ms=T0, limit=10)) == 4


def test_next_due_at_is_the_earliest_pending_delivery_of_those_peers(
    conn: sqlite3.Connection,
) -> None:
    assert outbox.next_due_at(conn, network="net1", recipients=["dev-a"]) is None
    sent = send(conn)
    outbox.mark_inflight(conn, [outbox.DeliveryKey(sent.id, "dev-a")], T0)
    outbox.mark_failed(
        conn,
        sent.id,
        "dev-a",
        error_code="ack_timeout",
        permanent=False,
        now_ms=T0,
        rand=lambda: 0.5,
    )
    assert outbox.next_due_at(conn, network="net1", recipients=["dev-a"]) == T0 + 250
    assert outbox.next_due_at(conn, network="net1", recipients=["other"]) is None
    assert outbox.next_due_at(conn, network="net2", recipients=["dev-a"]) is None


def test_expire_pending_kills_sends_past_the_ttl_only(conn: sqlite3.Connection) -> None:
    old = send(conn, client_message_id="old")
    young = send(conn, client_message_id="young", now_ms=T0 + outbox.TTL_MS)
    assert outbox.expire_pending(conn, now_ms=T0 + outbox.TTL_MS + 1) == 1
    rows = {row.id: row for row in outbox.list_rows(conn, status=None, network=None, limit=10)}
    assert rows[old.id].status == "dead"
    assert rows[old.id].last_error == outbox.EXPIRED
    assert rows[young.id].status == "pending"
    assert outbox.delivery_counts(conn) == {"pending": 1, "inflight": 0, "done": 0, "dead": 1}


def test_mark_due_now_puts_an_inflight_delivery_back_without_an_attempt(
    conn: sqlite3.Connection,
) -> None:
    sent = send(conn)
    assert not outbox.mark_due_now(conn, sent.id, "dev-a", T0 + 5)  # pending: nothing to do
    outbox.mark_inflight(conn, [outbox.DeliveryKey(sent.id, "dev-a")], T0)
    assert outbox.mark_due_now(conn, sent.id, "dev-a", T0 + 5)
    (due,) = outbox.due_deliveries(conn, now_ms=T0 + 5, limit=10, recipients=["dev-a"])
    assert (due.outbox_id, due.attempts) == (sent.id, 0)
    assert outbox.delivery_counts(conn)["inflight"] == 0
