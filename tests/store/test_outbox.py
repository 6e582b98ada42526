"""The outbox: the idempotency lookup table, derived row status, retries, recovery, requeue,
abort."""

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from meshactors.store import outbox
from meshactors.store.db import open_database
from meshactors.store.fingerprint import fingerprint_prefix, request_fingerprint
from meshactors.store.outbox import (
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    TTL_MS,
    AcceptOutcome,
    DeliveryKey,
    SendError,
    SendRequest,
    abort,
    accept,
    accept_many,
    backoff_ms,
    derive_status,
    due_deliveries,
    due_now_to_peers,
    list_rows,
    mark_delivered_many,
    mark_due_now,
    mark_failed,
    mark_inflight,
    recover_inflight,
    requeue,
)
from meshactors.wire.ipc import MAX_PAGE

T0 = 1_000_000


def request(**changes: Any) -> dict[str, Any]:
    """An accept() request; `changes` override its fields."""
    fields: dict[str, Any] = {
        "network": "net1",
        "recipients": ["dev-a"],
        "destination_kind": "peer",
        "destination_ref": "dev-a",
        "message": "hello",
        "priority": "next",
        "meta": {"topic": "greeting", "nested": {"x": 1, "y": 2}},
        "reply_to_id": None,
        "client_message_id": "cm-1",
        "now_ms": T0,
    }
    fields.update(changes)
    return fields


def send(conn: sqlite3.Connection, **changes: Any) -> AcceptOutcome:
    return accept(conn, **request(**changes))


def delivered(conn: sqlite3.Connection, row_id: str, recipient: str, now_ms: int) -> str:
    """The outcome of one recipient's ack, as the outbox records it (in a batch of one)."""
    (status,) = mark_delivered_many(conn, [DeliveryKey(row_id, recipient)], now_ms)
    return status


def row_of(conn: sqlite3.Connection, row_id: str) -> outbox.OutboxRow:
    (row,) = [r for r in list_rows(conn, status=None, network=None, limit=500)[0] if r.id == row_id]
    return row


def count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def put_in_state(conn: sqlite3.Connection, status: str) -> str:
    """Accept the default request and drive its row into `status` through the real API."""
    row_id = send(conn).id
    key = DeliveryKey(row_id, "dev-a")
    if status in ("inflight", "done"):
        assert mark_inflight(conn, [key], T0) == [key]
    if status == "done":
        assert delivered(conn, row_id, "dev-a", T0) == "done"
    if status in ("dead", "aborted"):
        mark_failed(conn, row_id, "dev-a", error_code="rejected", permanent=True, now_ms=T0)
    if status == "aborted":
        requeue(conn, row_id, new_client_message_id="cm-2", now_ms=T0)
    assert row_of(conn, row_id).status == status
    return row_id


LOOKUP_TABLE = [
    ("pending", True, "accepted", None),
    ("pending", False, "conflict", "pending_fingerprint_mismatch"),
    ("inflight", True, "accepted", None),
    ("inflight", False, "conflict", "inflight_fingerprint_mismatch"),
    ("done", True, "duplicate", None),
    ("done", False, "conflict", "done_fingerprint_mismatch"),
    ("dead", True, "conflict", "dead_fingerprint_match"),
    ("dead", False, "conflict", "dead_fingerprint_mismatch"),
    ("aborted", True, "conflict", "aborted_fingerprint_match"),
    ("aborted", False, "conflict", "aborted_fingerprint_mismatch"),
]


@pytest.mark.parametrize(("status", "match", "outcome", "reason"), LOOKUP_TABLE)
def test_lookup_table(
    conn: sqlite3.Connection, status: str, match: bool, outcome: str, reason: str | None
) -> None:
    row_id = put_in_state(conn, status)
    rows_before = count(conn, "outbox")
    retry = request(now_ms=T0 + 5) if match else request(message="changed", now_ms=T0 + 5)
    new_fp = request_fingerprint(
        destination_kind=retry["destination_kind"],
        destination_ref=retry["destination_ref"],
        reply_to_id=retry["reply_to_id"],
        priority=retry["priority"],
        meta=retry["meta"],
        body=retry["message"].encode(),
    )
    got = accept(conn, **retry)
    assert (got.outcome, got.id, got.client_message_id, got.status, got.reason) == (
        outcome,
        row_id,
        "cm-1",
        status,
        reason,
    )
    assert got.fingerprint_prefix == fingerprint_prefix(new_fp)
    assert count(conn, "outbox") == rows_before
    assert row_of(conn, row_id).status == status


def test_fresh_accept_writes_row_and_one_delivery_per_recipient(conn: sqlite3.Connection) -> None:
    got = send(
        conn, recipients=["dev-a", "dev-b", "dev-a"], destination_kind="all", destination_ref="*"
    )
    assert (got.outcome, got.status, got.reason) == ("accepted", "pending", None)
    row = row_of(conn, got.id)
    assert [d.recipient for d in row.deliveries] == ["dev-a", "dev-b"]
    assert all(d.status == "pending" and d.attempts == 0 for d in row.deliveries)
    assert row.meta == {"topic": "greeting", "nested": {"x": 1, "y": 2}}


def test_meta_key_order_does_not_make_a_retry_conflict(conn: sqlite3.Connection) -> None:
    first = send(conn, meta={"a": 1, "b": {"c": 1, "d": [{"e": 1, "f": 2}]}})
    again = send(conn, meta={"b": {"d": [{"f": 2, "e": 1}], "c": 1}, "a": 1})
    assert (again.outcome, again.id) == ("accepted", first.id)


@pytest.mark.parametrize(
    "change",
    [
        {"destination_ref": "dev-b"},
        {"destination_kind": "tag"},
        {"priority": "now"},
        {"message": "hello!"},
        {"reply_to_id": "m0"},
        {"meta": {"topic": "other"}},
    ],
)
def test_changed_routing_or_content_is_a_mismatch(
    conn: sqlite3.Connection, change: dict[str, Any]
) -> None:
    send(conn)
    got = send(conn, **change)
    assert (got.outcome, got.reason) == ("conflict", "pending_fingerprint_mismatch")


def test_same_key_in_another_network_is_a_separate_send(conn: sqlite3.Connection) -> None:
    one = send(conn)
    two = send(conn, network="net2", message="other")
    assert two.outcome == "accepted"
    assert one.id != two.id


def test_missing_client_message_id_is_minted_time_ordered(conn: sqlite3.Connection) -> None:
    first = send(conn, client_message_id=None, now_ms=T0)
    second = send(conn, client_message_id=None, now_ms=T0 + 1)
    assert first.outcome == second.outcome == "accepted"
    assert len(first.client_message_id) == len(second.client_message_id) == 26
    assert first.client_message_id < second.client_message_id
    assert count(conn, "outbox") == 2


def test_concurrent_accepts_of_one_key_make_one_row(db_path: Path) -> None:
    open_database(db_path).close()
    workers = 8
    connections = [open_database(db_path) for _ in range(workers)]
    start = threading.Barrier(workers)

    def accept_once(connection: sqlite3.Connection) -> AcceptOutcome:
        start.wait()
        return accept(connection, **request(recipients=["dev-a", "dev-b"]))

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(accept_once, connections))
    for connection in connections:
        connection.close()
    assert {o.outcome for o in outcomes} == {"accepted"}
    assert len({o.id for o in outcomes}) == 1
    check = open_database(db_path)
    assert count(check, "outbox") == 1
    assert count(check, "deliveries") == 2
    check.close()


def test_empty_recipients_are_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(SendError) as info:
        send(conn, recipients=[])
    assert info.value.code == "no_recipients"
    assert count(conn, "outbox") == 0


def test_retry_of_an_accepted_send_needs_no_recipients(conn: sqlite3.Connection) -> None:
    first = send(conn)
    assert send(conn, recipients=[]).id == first.id


@pytest.mark.parametrize(
    "change",
    [
        {"priority": "urgent"},
        {"destination_kind": "everyone"},
        {"client_message_id": ""},
        {"client_message_id": "x" * 129},
        {"client_message_id": "line\nbreak"},
        {"recipients": [f"dev-{i}" for i in range(outbox.MAX_RECIPIENTS + 1)]},
    ],
)
def test_bad_requests_are_refused_with_a_code(
    conn: sqlite3.Connection, change: dict[str, Any]
) -> None:
    with pytest.raises(SendError) as info:
        send(conn, **change)
    assert info.value.code == "invalid_request"
    assert count(conn, "outbox") == 0


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["pending", "inflight", "done"], "inflight"),
        (["inflight", "dead"], "inflight"),
        (["done", "done"], "done"),
        (["done", "dead"], "dead"),
        (["dead", "dead"], "dead"),
        (["done", "pending"], "pending"),
        (["dead", "pending"], "pending"),
    ],
)
def test_derive_status(statuses: list[str], expected: str) -> None:
    assert derive_status(statuses) == expected


def test_row_status_follows_its_deliveries(conn: sqlite3.Connection) -> None:
    row_id = send(conn, recipients=["a", "b", "c"], destination_kind="all", destination_ref="*").id
    assert mark_inflight(conn, [DeliveryKey(row_id, "a")], T0 + 1)
    assert row_of(conn, row_id).status == "inflight"
    delivered(conn, row_id, "a", T0 + 2)
    assert row_of(conn, row_id).status == "pending"
    delivered(conn, row_id, "b", T0 + 3)
    mark_failed(conn, row_id, "c", error_code="no_such_peer", permanent=True, now_ms=T0 + 4)
    row = row_of(conn, row_id)
    assert (row.status, row.last_error, row.updated_at) == ("dead", "no_such_peer", T0 + 4)
    assert [d.status for d in row.deliveries] == ["done", "done", "dead"]


def test_all_recipients_done_makes_the_row_done(conn: sqlite3.Connection) -> None:
    row_id = send(conn, recipients=["a", "b"], destination_kind="all", destination_ref="*").id
    delivered(conn, row_id, "a", T0)
    assert row_of(conn, row_id).status == "pending"
    delivered(conn, row_id, "b", T0)
    assert row_of(conn, row_id).status == "done"


def test_due_deliveries_order_by_priority_then_age(conn: sqlite3.Connection) -> None:
    low = send(conn, client_message_id="low", priority="low", now_ms=T0).id
    next_old = send(conn, client_message_id="next-old", priority="next", now_ms=T0 + 1).id
    now = send(conn, client_message_id="now", priority="now", now_ms=T0 + 2).id
    next_new = send(conn, client_message_id="next-new", priority="next", now_ms=T0 + 3).id
    due = due_deliveries(conn, now_ms=T0 + 10, limit=10)
    assert [d.outbox_id for d in due] == [now, next_old, next_new, low]
    assert [d.outbox_id for d in due_deliveries(conn, now_ms=T0 + 10, limit=2)] == [now, next_old]
    first = due[0]
    assert (first.message, first.meta, first.client_message_id) == (
        "hello",
        {"topic": "greeting", "nested": {"x": 1, "y": 2}},
        "now",
    )


def test_due_deliveries_filter_by_time_and_network(conn: sqlite3.Connection) -> None:
    here = send(conn, now_ms=T0).id
    there = send(conn, network="net2", now_ms=T0 + 50).id
    assert due_deliveries(conn, now_ms=T0 - 1, limit=10) == []
    assert [d.outbox_id for d in due_deliveries(conn, now_ms=T0 + 49, limit=10)] == [here]
    in_net2 = due_deliveries(conn, now_ms=T0 + 50, limit=10, network="net2")
    assert [d.outbox_id for d in in_net2] == [there]


def test_due_now_to_peers_cuts_only_those_peers_backoffs_in_that_network(
    conn: sqlite3.Connection,
) -> None:
    fan = send(conn, recipients=["a", "b", "c"], destination_kind="all", destination_ref="*").id
    elsewhere = send(conn, network="net2", recipients=["a"], client_message_id="cm-2").id
    keys = [DeliveryKey(fan, peer) for peer in "abc"] + [DeliveryKey(elsewhere, "a")]
    mark_inflight(conn, keys, T0)
    for key in keys:
        mark_failed(
            conn,
            key.outbox_id,
            key.recipient,
            error_code="ack_timeout",
            permanent=False,
            now_ms=T0,
            rand=lambda: 1.0,
        )
    assert due_deliveries(conn, now_ms=T0 + 1, limit=10) == []
    assert due_now_to_peers(conn, "net1", ["a"], T0 + 1) == 1
    (due,) = due_deliveries(conn, now_ms=T0 + 1, limit=10)
    assert (due.outbox_id, due.recipient, due.attempts) == (fan, "a", 1)  # attempts kept
    assert due_now_to_peers(conn, "net1", ["a"], T0 + 1) == 0  # nothing left waiting
    # several peers in one call: each one's backoff cut, with one a backoff never held
    assert due_now_to_peers(conn, "net1", ["b", "c", "gone"], T0 + 1) == 2
    due_now = due_deliveries(conn, now_ms=T0 + 1, limit=10)
    assert sorted((d.outbox_id, d.recipient) for d in due_now) == [(fan, p) for p in "abc"]


def test_mark_inflight_claims_only_pending_deliveries(conn: sqlite3.Connection) -> None:
    row_id = send(conn, recipients=["a", "b"], destination_kind="all", destination_ref="*").id
    a, b = DeliveryKey(row_id, "a"), DeliveryKey(row_id, "b")
    assert mark_inflight(conn, [a], T0) == [a]
    assert mark_inflight(conn, [a, b, DeliveryKey("nope", "a")], T0) == [b]
    assert due_deliveries(conn, now_ms=T0, limit=10) == []


@pytest.mark.parametrize("attempts", [1, 2, 3, 10, 30, 200])
def test_backoff_is_full_jitter_exponential_and_capped(attempts: int) -> None:
    ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempts - 1))
    assert backoff_ms(attempts, lambda: 0.0) == 0
    assert backoff_ms(attempts, lambda: 0.5) == ceiling // 2
    assert backoff_ms(attempts, lambda: 0.999999) == int(0.999999 * ceiling)


def test_a_transient_failure_retries_after_backoff(conn: sqlite3.Connection) -> None:
    row_id = send(conn).id
    key = DeliveryKey(row_id, "dev-a")
    mark_inflight(conn, [key], T0)
    for attempt, now in enumerate([T0 + 10, T0 + 20, T0 + 30], start=1):
        status = mark_failed(
            conn,
            row_id,
            "dev-a",
            error_code="ack_timeout",
            permanent=False,
            now_ms=now,
            rand=lambda: 1.0,
        )
        assert status == "pending"
        delivery = row_of(conn, row_id).deliveries[0]
        assert delivery.attempts == attempt
        assert delivery.next_attempt_at == now + BACKOFF_BASE_MS * 2 ** (attempt - 1)
        assert delivery.last_error == "ack_timeout"
    assert row_of(conn, row_id).status == "pending"
    assert due_deliveries(conn, now_ms=T0 + 30 + 4 * BACKOFF_BASE_MS - 1, limit=10) == []
    (due,) = due_deliveries(conn, now_ms=T0 + 30 + 4 * BACKOFF_BASE_MS, limit=10)
    assert due.attempts == 3


@pytest.mark.parametrize("finished", ["done", "dead"])
def test_a_failure_after_a_delivery_finished_changes_nothing(
    conn: sqlite3.Connection, finished: str
) -> None:
    row_id = put_in_state(conn, finished)
    before = row_of(conn, row_id)
    status = mark_failed(
        conn, row_id, "dev-a", error_code="ack_timeout", permanent=False, now_ms=T0 + 9
    )
    assert status == f"already_{finished}"  # no news: the caller publishes nothing
    assert row_of(conn, row_id) == before


def test_max_attempts_makes_a_delivery_dead(conn: sqlite3.Connection) -> None:
    row_id = send(conn).id
    statuses = [
        mark_failed(
            conn,
            row_id,
            "dev-a",
            error_code="ack_timeout",
            permanent=False,
            now_ms=T0 + i,
            max_attempts=3,
        )
        for i in range(3)
    ]
    assert statuses == ["pending", "pending", "dead"]
    row = row_of(conn, row_id)
    assert (row.status, row.last_error) == ("dead", "ack_timeout")
    assert (row.deliveries[0].attempts, row.deliveries[0].last_error) == (3, "ack_timeout")
    assert due_deliveries(conn, now_ms=T0 + TTL_MS, limit=10) == []


def test_a_send_past_its_ttl_dies_at_its_next_failure(conn: sqlite3.Connection) -> None:
    row_id = send(conn).id
    at_ttl = mark_failed(
        conn, row_id, "dev-a", error_code="offline", permanent=False, now_ms=T0 + TTL_MS
    )
    assert at_ttl == "pending"
    past_ttl = mark_failed(
        conn, row_id, "dev-a", error_code="offline", permanent=False, now_ms=T0 + TTL_MS + 1
    )
    assert past_ttl == "dead"
    assert row_of(conn, row_id).last_error == "offline"


def test_a_permanent_error_is_dead_at_once(conn: sqlite3.Connection) -> None:
    row_id = send(conn).id
    status = mark_failed(conn, row_id, "dev-a", error_code="denied", permanent=True, now_ms=T0)
    assert status == "dead"
    row = row_of(conn, row_id)
    assert (row.status, row.last_error, row.deliveries[0].attempts) == ("dead", "denied", 1)


def test_finished_or_unknown_deliveries_ignore_late_reports(conn: sqlite3.Connection) -> None:
    row_id = put_in_state(conn, "done")
    assert delivered(conn, row_id, "dev-a", T0 + 1) == "already_done"  # a repeated ack
    assert row_of(conn, row_id).updated_at == T0  # ... changes nothing
    assert mark_failed(conn, "nope", "dev-a", error_code="x", permanent=True, now_ms=T0) is None
    assert delivered(conn, "nope", "dev-a", T0) == "gone"


def test_an_ack_after_the_delivery_gave_up_makes_it_done(conn: sqlite3.Connection) -> None:
    # The peer stored the message after all (its ack came after the send outlived its ttl):
    # the ack wins, so `message_delivered` follows the `message_dead` published before.
    row_id = send(conn).id
    gave_up = mark_failed(
        conn, row_id, "dev-a", error_code="offline", permanent=False, now_ms=T0 + TTL_MS + 1
    )
    assert gave_up == "dead"
    assert delivered(conn, row_id, "dev-a", T0 + TTL_MS + 2) == "done"
    assert row_of(conn, row_id).status == "done"


def test_recover_inflight_puts_stranded_deliveries_back(db_path: Path) -> None:
    conn = open_database(db_path)
    row_id = send(conn, recipients=["a", "b", "c"], destination_kind="all", destination_ref="*").id
    mark_inflight(conn, [DeliveryKey(row_id, "a"), DeliveryKey(row_id, "b")], T0)
    delivered(conn, row_id, "c", T0)
    conn.close()  # the daemon crashed with two deliveries in flight

    conn = open_database(db_path)
    assert row_of(conn, row_id).status == "inflight"
    assert recover_inflight(conn, T0 + 100) == 2
    row = row_of(conn, row_id)
    assert row.status == "pending"
    assert [(d.status, d.attempts) for d in row.deliveries] == [
        ("pending", 0),
        ("pending", 0),
        ("done", 0),
    ]
    assert {d.recipient for d in due_deliveries(conn, now_ms=T0 + 100, limit=10)} == {"a", "b"}
    assert recover_inflight(conn, T0 + 200) == 0
    conn.close()


def test_requeue_keeps_routing_and_supersedes_the_old_row(conn: sqlite3.Connection) -> None:
    old_id = send(
        conn,
        recipients=["a", "b", "c"],
        destination_kind="tag",
        destination_ref="builders",
        priority="now",
        reply_to_id="m0",
    ).id
    delivered(conn, old_id, "a", T0)
    mark_failed(conn, old_id, "b", error_code="denied", permanent=True, now_ms=T0)
    mark_failed(conn, old_id, "c", error_code="denied", permanent=True, now_ms=T0)
    old = row_of(conn, old_id)
    assert old.status == "dead"

    new = requeue(conn, old_id, new_client_message_id=None, now_ms=T0 + 1000)
    assert new.id != old_id
    assert new.client_message_id != old.client_message_id
    assert (new.status, new.created_at, new.superseded_by) == ("pending", T0 + 1000, None)
    routing = (
        "network",
        "destination_kind",
        "destination_ref",
        "priority",
        "message",
        "meta",
        "reply_to_id",
        "request_fingerprint",
    )
    assert [getattr(new, f) for f in routing] == [getattr(old, f) for f in routing]
    assert [(d.recipient, d.status, d.attempts) for d in new.deliveries] == [
        ("b", "pending", 0),
        ("c", "pending", 0),
    ]
    aborted = row_of(conn, old_id)
    assert (aborted.status, aborted.superseded_by) == ("aborted", new.id)
    due = due_deliveries(conn, now_ms=T0 + 1000, limit=10)
    assert {d.recipient for d in due} == {"b", "c"}
    # out as the same message, which a recipient that stored it dedupes, through a chain too
    assert old.origin_client_message_id == old.client_message_id
    assert new.origin_client_message_id == old.client_message_id
    assert {d.client_message_id for d in due} == {old.client_message_id}
    for recipient in ("b", "c"):
        mark_failed(conn, new.id, recipient, error_code="denied", permanent=True, now_ms=T0)
    newer = requeue(conn, new.id, new_client_message_id="third", now_ms=T0 + 2000)
    assert (newer.client_message_id, newer.origin_client_message_id) == (
        "third",
        old.client_message_id,
    )


def test_a_requeues_first_key_stays_taken_once_retention_deleted_the_first_row(
    conn: sqlite3.Connection,
) -> None:
    """The requeue goes out under the first row's key: a new send under it would reach the
    recipients as the same message and be deduped away, so the requeue answers for it."""
    first_id = put_in_state(conn, "dead")
    mid = requeue(conn, first_id, new_client_message_id="cm-2", now_ms=T0 + 1)
    mark_failed(conn, mid.id, "dev-a", error_code="rejected", permanent=True, now_ms=T0 + 1)
    last = requeue(conn, mid.id, new_client_message_id="cm-3", now_ms=T0 + 2)
    assert outbox.delete_sends(conn, [first_id]) == 1
    rows_before = count(conn, "outbox")
    other = send(conn, message="another message", now_ms=T0 + 5)
    assert (other.outcome, other.id, other.reason) == (
        "conflict",
        last.id,
        "pending_fingerprint_mismatch",
    )
    retry = send(conn, now_ms=T0 + 5)  # the first send's retry: its requeue has it
    assert (retry.outcome, retry.id) == ("accepted", last.id)
    assert count(conn, "outbox") == rows_before
    dead_id = send(conn, client_message_id="cm-other").id
    mark_failed(conn, dead_id, "dev-a", error_code="rejected", permanent=True, now_ms=T0 + 6)
    with pytest.raises(SendError) as info:  # nor may a requeue take it
        requeue(conn, dead_id, new_client_message_id="cm-1", now_ms=T0 + 7)
    assert (info.value.code, str(info.value)) == (
        "conflict",
        f"client_message_id 'cm-1' is already row {last.id}",
    )


def test_requeue_leaves_out_evicted_recipients_and_refuses_a_row_of_only_them(
    conn: sqlite3.Connection,
) -> None:
    old_id = send(conn, recipients=["a", "b", "c"], destination_kind="all", destination_ref="*").id
    for recipient in ("a", "b"):
        mark_failed(conn, old_id, recipient, error_code="denied", permanent=True, now_ms=T0)
    outbox.bury_evicted(conn, network="net1", recipients={"c"}, now_ms=T0 + 1)
    with pytest.raises(SendError) as info:  # nobody else to send it to
        requeue(conn, old_id, new_client_message_id=None, now_ms=T0 + 2, evicted={"a", "b", "c"})
    assert (info.value.code, str(info.value)) == ("conflict", "a was evicted from net1")
    assert (row_of(conn, old_id).status, count(conn, "outbox")) == ("dead", 1)
    new = requeue(conn, old_id, new_client_message_id=None, now_ms=T0 + 3, evicted={"b", "c"})
    assert [(d.recipient, d.status) for d in new.deliveries] == [("a", "pending")]


def test_requeue_refuses_a_row_with_a_delivery_still_being_tried(
    conn: sqlite3.Connection,
) -> None:
    old_id = send(conn, recipients=["a", "b"], destination_kind="all", destination_ref="*").id
    mark_failed(conn, old_id, "a", error_code="denied", permanent=True, now_ms=T0)
    assert mark_inflight(conn, [DeliveryKey(old_id, "b")], T0) == [DeliveryKey(old_id, "b")]
    assert mark_due_now(conn, old_id, "b", T0 + 1)  # b left: its attempt may have arrived
    before = row_of(conn, old_id)
    assert before.status == "pending"
    with pytest.raises(SendError) as info:
        requeue(conn, old_id, new_client_message_id="again", now_ms=T0 + 5)
    assert info.value.code == "not_requeueable"
    assert "may already have reached" in str(info.value)
    assert row_of(conn, old_id) == before
    assert count(conn, "outbox") == 1
    assert [d.outbox_id for d in due_deliveries(conn, now_ms=T0 + 5, limit=10)] == [old_id]


def test_requeue_refuses_a_taken_key_unknown_rows_and_other_states(
    conn: sqlite3.Connection,
) -> None:
    dead_id = put_in_state(conn, "dead")
    send(conn, client_message_id="taken")
    with pytest.raises(SendError) as info:
        requeue(conn, dead_id, new_client_message_id="taken", now_ms=T0)
    assert info.value.code == "conflict"
    assert row_of(conn, dead_id).status == "dead"
    with pytest.raises(SendError) as info:
        requeue(conn, "no-such-row", new_client_message_id=None, now_ms=T0)
    assert info.value.code == "not_found"
    done_id = send(conn, client_message_id="finished").id
    delivered(conn, done_id, "dev-a", T0)
    with pytest.raises(SendError) as info:
        requeue(conn, done_id, new_client_message_id=None, now_ms=T0)
    assert info.value.code == "not_requeueable"
    open_id = send(conn, client_message_id="open").id
    for claim in (False, True):  # pending, then inflight
        if claim:
            mark_inflight(conn, [DeliveryKey(open_id, "dev-a")], T0)
        with pytest.raises(SendError) as info:
            requeue(conn, open_id, new_client_message_id=None, now_ms=T0)
        assert info.value.code == "not_requeueable"
    assert count(conn, "outbox") == 4


def test_abort_ends_the_open_deliveries_and_nothing_sends_them_again(
    conn: sqlite3.Connection,
) -> None:
    row_id = send(conn, recipients=["a", "b", "c"], destination_kind="all", destination_ref="*").id
    mark_inflight(conn, [DeliveryKey(row_id, "a")], T0)  # the sender has a's attempt out
    delivered(conn, row_id, "c", T0)
    row, ended = abort(conn, row_id, now_ms=T0 + 1)
    assert ended == [DeliveryKey(row_id, "a"), DeliveryKey(row_id, "b")]
    assert (row.status, row.superseded_by, row.updated_at) == ("aborted", None, T0 + 1)
    assert [(d.recipient, d.status, d.last_error) for d in row.deliveries] == [
        ("a", "dead", "aborted"),
        ("b", "dead", "aborted"),
        ("c", "done", None),
    ]
    assert due_deliveries(conn, now_ms=T0 + TTL_MS, limit=10) == []
    assert mark_inflight(conn, [DeliveryKey(row_id, "b")], T0 + 2) == []
    assert not mark_due_now(conn, row_id, "a", T0 + 2)  # a's peer left: not due again
    assert recover_inflight(conn, T0 + 2) == 0
    assert mark_failed(conn, row_id, "a", error_code="x", permanent=False, now_ms=T0 + 2) == (
        "already_dead"
    )
    assert delivered(conn, row_id, "a", T0 + 3) == "done"  # a's attempt arrived after all
    late = row_of(conn, row_id)
    assert late.status == "aborted"  # the user's decision stays; the delivery tells the fact
    assert (late.deliveries[0].recipient, late.deliveries[0].status) == ("a", "done")


def test_a_death_stays_untold_until_marked_told_or_delivered_after_all(
    conn: sqlite3.Connection,
) -> None:
    row_id = send(conn, recipients=["a", "b", "c"], destination_kind="all", destination_ref="*").id
    mark_failed(conn, row_id, "c", error_code="x", permanent=True, now_ms=T0)  # told when recorded
    _, ended = abort(conn, row_id, now_ms=T0 + 1)
    assert ended == [DeliveryKey(row_id, "a"), DeliveryKey(row_id, "b")]
    assert outbox.untold_deaths(conn, limit=10) == [(key, "aborted") for key in ended]
    pruned = DeliveryKey("gone", "a")  # retention deleted its row: its event is still owed
    assert outbox.still_untold(conn, [*reversed(ended), DeliveryKey(row_id, "c"), pruned]) == [
        DeliveryKey(row_id, "b"),
        DeliveryKey(row_id, "a"),
        pruned,
    ]
    outbox.mark_told(conn, ended[:1], T0 + 2)
    assert delivered(conn, row_id, "b", T0 + 3) == "done"  # b's copy arrived after all
    assert outbox.untold_deaths(conn, limit=10) == []
    assert outbox.still_untold(conn, ended) == []


def test_abort_takes_a_dead_row_and_refuses_finished_and_unknown_ones(
    conn: sqlite3.Connection,
) -> None:
    dead_id = put_in_state(conn, "dead")
    row, ended = abort(conn, dead_id, now_ms=T0 + 1)
    assert (row.status, ended) == ("aborted", [])
    assert row.deliveries[0].last_error != "aborted"  # it had died on its own
    done_id = send(conn, client_message_id="finished").id
    delivered(conn, done_id, "dev-a", T0)
    for finished, status in ((done_id, "done"), (dead_id, "aborted")):
        with pytest.raises(SendError) as info:
            abort(conn, finished, now_ms=T0 + 2)
        assert info.value.code == "conflict"
        assert f"is {status};" in str(info.value)
        assert row_of(conn, finished).status == status
    with pytest.raises(SendError) as info:
        abort(conn, "x" * 10_000, now_ms=T0)
    assert info.value.code == "not_found"
    assert len(str(info.value)) < 100  # the id is cut short


def test_list_rows_filters_newest_first_and_checks_the_limit(conn: sqlite3.Connection) -> None:
    first = send(conn, client_message_id="1", now_ms=T0).id
    second = send(conn, client_message_id="2", now_ms=T0 + 1).id
    other = send(conn, client_message_id="3", network="net2", now_ms=T0 + 2).id
    delivered(conn, first, "dev-a", T0)
    every, more = list_rows(conn, status=None, network=None, limit=10)
    assert not more
    assert [r.id for r in every] == [other, second, first]
    assert [r.id for r in list_rows(conn, status="pending", network="net1", limit=10)[0]] == [
        second
    ]
    assert [r.id for r in list_rows(conn, status="done", network=None, limit=10)[0]] == [first]
    one, more = list_rows(conn, status=None, network=None, limit=1)
    assert (len(one), more) == (1, True)
    with pytest.raises(SendError) as info:
        list_rows(conn, status="lost", network=None, limit=10)
    assert info.value.code == "invalid_request"
    with pytest.raises(ValueError, match="limit"):
        list_rows(conn, status=None, network=None, limit=0)


def test_list_rows_and_due_deliveries_are_capped(conn: sqlite3.Connection) -> None:
    for i in range(MAX_PAGE + 1):
        send(conn, client_message_id=f"cm-{i}")
    assert len(list_rows(conn, status=None, network=None, limit=MAX_PAGE)[0]) == MAX_PAGE
    assert len(due_deliveries(conn, now_ms=T0, limit=MAX_PAGE)) == MAX_PAGE
    with pytest.raises(ValueError, match=f"limit must be 1-{MAX_PAGE}, got 10000"):
        list_rows(conn, status=None, network=None, limit=10_000)  # refused, not cut


def test_list_rows_pages_past_max_page_before_a_row_even_once_it_is_gone(
    conn: sqlite3.Connection,
) -> None:
    # three sends a millisecond: the id orders the rows of one created_at
    sent = [send(conn, client_message_id=f"pg-{i}", now_ms=T0 + i // 3) for i in range(600)]
    newest_first = [row.id for row in reversed(sent)]
    for limit in (MAX_PAGE, 7):
        seen: list[str] = []
        before = None
        more = True
        while more:
            page, more = list_rows(conn, status=None, network=None, limit=limit, before=before)
            seen += [row.id for row in page]
            before = page[-1].created_at, page[-1].id
        assert seen == newest_first
    first, _ = list_rows(conn, status="pending", network="net1", limit=MAX_PAGE)
    assert [row.id for row in first] == newest_first[:MAX_PAGE]
    last = first[-1]
    outbox.delete_sends(conn, [last.id])  # retention may delete the row a cursor names
    rest, more = list_rows(
        conn, status="pending", network="net1", limit=MAX_PAGE, before=(last.created_at, last.id)
    )
    assert not more
    assert [row.id for row in rest] == newest_first[MAX_PAGE:]


def test_accept_with_room_claims_the_delivery_at_once(conn: sqlite3.Connection) -> None:
    room = {"dev-a": 1}
    first = send(conn, client_message_id="cm-1", room=room)
    second = send(conn, client_message_id="cm-2", room=room)
    assert room == {"dev-a": 0}
    assert (first.status, second.status) == ("inflight", "pending")
    (claimed,) = first.claimed
    assert (claimed.outbox_id, claimed.recipient, claimed.client_message_id) == (
        first.id,
        "dev-a",
        "cm-1",
    )
    assert (claimed.message, claimed.attempts, claimed.created_at) == ("hello", 0, T0)
    assert second.claimed == ()
    assert row_of(conn, first.id).deliveries[0].status == "inflight"
    assert [d.outbox_id for d in due_deliveries(conn, now_ms=T0, limit=10)] == [second.id]


def test_accept_never_claims_past_a_queued_delivery(conn: sqlite3.Connection) -> None:
    queued = send(conn, client_message_id="cm-1")
    room = {"dev-a": 5}
    later = send(conn, client_message_id="cm-2", room=room)
    assert (queued.status, later.status, later.claimed, room) == (
        "pending",
        "pending",
        (),
        {"dev-a": 5},
    )


def test_accept_claims_only_the_recipients_with_room(conn: sqlite3.Connection) -> None:
    outcome = send(conn, recipients=["dev-a", "dev-b"], destination_kind="all", room={"dev-b": 1})
    assert [d.recipient for d in outcome.claimed] == ["dev-b"]
    states = {d.recipient: d.status for d in row_of(conn, outcome.id).deliveries}
    assert (outcome.status, states) == ("inflight", {"dev-a": "pending", "dev-b": "inflight"})


def test_a_repeated_accept_claims_nothing(conn: sqlite3.Connection) -> None:
    first = send(conn)
    room = {"dev-a": 1}
    again = send(conn, room=room)
    assert (again.outcome, again.id, again.claimed, room) == ("accepted", first.id, (), room)


def test_mark_delivered_many_answers_each_key_in_order(conn: sqlite3.Connection) -> None:
    one, two = send(conn, client_message_id="cm-1").id, send(conn, client_message_id="cm-2").id
    keys = [DeliveryKey(one, "dev-a"), DeliveryKey(two, "dev-a")]
    mark_inflight(conn, keys, T0)
    asked = [keys[0], keys[0], DeliveryKey(two, "dev-x"), keys[1]]
    assert mark_delivered_many(conn, asked, T0) == ["done", "already_done", "gone", "done"]
    assert [row_of(conn, row).status for row in (one, two)] == ["done", "done"]
    assert mark_delivered_many(conn, keys, T0) == ["already_done", "already_done"]


def test_a_key_repeated_in_one_call_is_answered_by_the_row_the_call_writes(
    conn: sqlite3.Connection,
) -> None:
    run = [
        SendRequest(**request(client_message_id="k")),
        SendRequest(**request(client_message_id="k")),  # the same request: the same row
        SendRequest(**request(client_message_id="k", message="other")),  # conflict
    ]
    first, again, other = accept_many(conn, run, {"dev-a": 8})
    assert isinstance(first, AcceptOutcome) and isinstance(again, AcceptOutcome)
    assert (first.outcome, first.status, len(first.claimed)) == ("accepted", "inflight", 1)
    assert (again.outcome, again.id, again.status, again.claimed) == (
        "accepted",
        first.id,
        "inflight",
        (),
    )
    assert isinstance(other, AcceptOutcome)
    assert (other.outcome, other.id, other.reason) == (
        "conflict",
        first.id,
        "inflight_fingerprint_mismatch",
    )
    assert (count(conn, "outbox"), count(conn, "deliveries")) == (1, 1)


def test_a_refused_accept_in_a_run_writes_nothing_and_the_run_goes_on(
    conn: sqlite3.Connection,
) -> None:
    send(conn, client_message_id="taken", message="first")

    def accepting(**changes: Any) -> SendRequest:
        return SendRequest(**request(**changes))

    run = [
        accepting(client_message_id="a"),
        accepting(client_message_id="taken", message="other"),  # conflict
        accepting(client_message_id="b", recipients=[]),  # no_recipients
        accepting(client_message_id="c", priority="urgent"),  # invalid_request
        accepting(client_message_id="d"),
    ]
    conn.execute("BEGIN IMMEDIATE")  # as the store's group commit holds one open
    outcomes = accept_many(conn, run, {})
    conn.execute("COMMIT")
    assert [getattr(o, "outcome", getattr(o, "code", None)) for o in outcomes] == [
        "accepted",
        "conflict",
        "no_recipients",
        "invalid_request",
        "accepted",
    ]
    kept = {row[0] for row in conn.execute("SELECT client_message_id FROM outbox")}
    assert kept == {"taken", "a", "d"}
    assert count(conn, "deliveries") == 3
