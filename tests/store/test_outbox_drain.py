"""The drainer's store queries: due work for chosen recipients, the next due time, TTL expiry
of sends whose peer never came back, and per-status counts."""

import contextlib
import functools
import sqlite3
from pathlib import Path

import pytest

from meshactors.store import db, outbox
from meshactors.store.db import open_database
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
    expired = outbox.expire_pending(conn, now_ms=T0 + outbox.TTL_MS + 1)
    assert expired.deliveries == [outbox.DeliveryKey(old.id, "dev-a")]
    assert not expired.more
    rows = {row.id: row for row in outbox.list_rows(conn, status=None, network=None, limit=10)[0]}
    assert rows[old.id].status == "dead"
    assert rows[old.id].last_error == outbox.EXPIRED
    assert rows[young.id].status == "pending"
    assert outbox.delivery_counts(conn) == {"pending": 1, "inflight": 0, "done": 0, "dead": 1}


def test_expire_pending_cut_short_by_its_delivery_bound_ends_the_send_next_call(
    conn: sqlite3.Connection,
) -> None:
    old = send(conn, recipients=["dev-a", "dev-b", "dev-c"], client_message_id="old")
    later = functools.partial(outbox.expire_pending, now_ms=T0 + outbox.TTL_MS + 1, deliveries=2)
    first = later(conn)
    assert (len(first.deliveries), first.more) == (2, True)
    (row,), _ = outbox.list_rows(conn, status=None, network=None, limit=10)
    assert row.status == "pending"  # one delivery is still waiting for the next call
    second = later(conn)
    assert (len(second.deliveries), second.more) == (1, False)
    assert {key.recipient for key in first.deliveries + second.deliveries} == {
        "dev-a",
        "dev-b",
        "dev-c",
    }
    (row,), _ = outbox.list_rows(conn, status=None, network=None, limit=10)
    assert (row.id, row.status) == (old.id, "dead")
    assert outbox.delivery_counts(conn) == {"pending": 0, "inflight": 0, "done": 0, "dead": 3}


def test_expire_pending_fills_its_batch_only_with_sends_it_can_expire(
    conn: sqlite3.Connection,
) -> None:
    # Older inflight sends with nothing pending (every delivery on its way to a peer) ...
    for i in range(2):
        busy = send(conn, client_message_id=f"busy-{i}", now_ms=T0 + i)
        outbox.mark_inflight(conn, [outbox.DeliveryKey(busy.id, "dev-a")], T0 + i)
    # ... and a younger inflight one whose other recipient never came back.
    stuck = send(conn, recipients=["dev-a", "gone"], client_message_id="stuck", now_ms=T0 + 5)
    outbox.mark_inflight(conn, [outbox.DeliveryKey(stuck.id, "dev-a")], T0 + 5)
    expired = outbox.expire_pending(conn, now_ms=T0 + outbox.TTL_MS + 10, batch=2)
    assert expired.deliveries == [outbox.DeliveryKey(stuck.id, "gone")]
    assert not expired.more
    assert outbox.delivery_counts(conn) == {"pending": 0, "inflight": 3, "done": 0, "dead": 1}


def test_bury_evicted_kills_the_open_deliveries_to_those_devices_in_that_network(
    conn: sqlite3.Connection,
) -> None:
    both = send(conn, recipients=["gone", "dev-a"], client_message_id="both")
    flying = send(conn, recipients=["gone"], client_message_id="flying")
    outbox.mark_inflight(conn, [outbox.DeliveryKey(flying.id, "gone")], T0)
    elsewhere = send(conn, recipients=["gone"], client_message_id="other", network="net2")
    buried = outbox.bury_evicted(conn, network="net1", recipients=["gone"], now_ms=T0 + 1)
    assert set(buried.deliveries) == {
        outbox.DeliveryKey(both.id, "gone"),
        outbox.DeliveryKey(flying.id, "gone"),
    }
    assert not buried.more
    rows = {row.id: row for row in outbox.list_rows(conn, status=None, network=None, limit=10)[0]}
    assert (rows[flying.id].status, rows[flying.id].last_error) == ("dead", outbox.EVICTED)
    assert rows[both.id].status == "pending"  # dev-a may still get it
    assert rows[elsewhere.id].status == "pending"
    assert outbox.delivery_counts(conn) == {"pending": 2, "inflight": 0, "done": 0, "dead": 2}
    # this device evicted: everything of the network dies
    everything = outbox.bury_evicted(conn, network="net1", recipients=None, now_ms=T0 + 2)
    assert everything.deliveries == [outbox.DeliveryKey(both.id, "dev-a")]
    (pending,), _ = outbox.list_rows(conn, status="pending", network=None, limit=10)
    assert pending.id == elsewhere.id


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


def test_a_peers_queue_is_read_in_priority_then_age_order_and_only_as_far_as_asked(
    conn: sqlite3.Connection,
) -> None:
    olds = [send(conn, client_message_id=f"old-{i}", now_ms=T0 + i).id for i in range(5)]
    urgent = send(conn, client_message_id="urgent", priority="now", now_ms=T0 + 9).id
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    due = outbox.due_deliveries(conn, now_ms=T0 + 10, limit=3, recipients=["dev-a"])
    conn.set_trace_callback(None)
    assert [d.outbox_id for d in due] == [urgent, *olds[:2]]
    (query,) = [sql for sql in seen if "deliveries_queue" in sql]
    plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}")]
    assert any("deliveries_queue" in line for line in plan)
    assert not any("TEMP B-TREE" in line for line in plan), plan  # LIMIT ends the walk


def test_the_queue_rank_is_filled_for_open_deliveries_when_an_older_database_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:3])  # the schema before the rank
    with contextlib.closing(open_database(path)) as old:
        for key, priority, at in (("late", "next", T0), ("urgent", "now", T0 + 1)):
            old.execute(
                "INSERT INTO outbox (id, network, client_message_id, request_fingerprint,"
                " destination_kind, destination_ref, priority, message, meta_json, status,"
                " created_at, updated_at) VALUES (?, 'net1', ?, x'00', 'peer', 'dev-a', ?,"
                " 'hi', 'null', 'pending', ?, ?)",
                (key, key, priority, at, at),
            )
            old.execute(
                "INSERT INTO deliveries (outbox_id, recipient, status, attempts,"
                " next_attempt_at) VALUES (?, 'dev-a', 'pending', 0, ?)",
                (key, at),
            )
    monkeypatch.undo()
    with contextlib.closing(open_database(path)) as conn:
        due = outbox.due_deliveries(conn, now_ms=T0 + 5, limit=10, recipients=["dev-a"])
        assert [d.outbox_id for d in due] == ["urgent", "late"]
