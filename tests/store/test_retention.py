"""Retention: finished history goes by age and count in bounded batches, never what the
idempotency tables still need; counts stay exact; freed pages are reused (issue 22)."""

import sqlite3
from pathlib import Path

from meshactors.store import events, outbox
from meshactors.store.db import MIGRATIONS, open_database, row_counts
from meshactors.store.events import Event
from meshactors.store.outbox import DeliveryKey
from meshactors.store.retention import (
    DAY_MS,
    IDEMPOTENCY_WINDOW_MS,
    INBOX_DEDUPE_WINDOW_MS,
    Retention,
    prune_events,
    prune_inbox,
    prune_outbox,
    prune_step,
)
from tests.store.test_inbox import receive
from tests.store.test_outbox import T0, count, request

WEEK = Retention(days=7, rows=1_000_000, dead_grace_days=30, batch=100)


def delivered(conn: sqlite3.Connection, key: str, at: int) -> str:
    row_id = outbox.accept(conn, **request(client_message_id=key, now_ms=at)).id
    outbox.mark_inflight(conn, [DeliveryKey(row_id, "dev-a")], at)
    outbox.mark_delivered_many(conn, [DeliveryKey(row_id, "dev-a")], at)
    return row_id


def dead(conn: sqlite3.Connection, key: str, at: int) -> str:
    row_id = outbox.accept(conn, **request(client_message_id=key, now_ms=at)).id
    outbox.mark_failed(conn, row_id, "dev-a", error_code="x", permanent=True, now_ms=at)
    return row_id


def keys(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT client_message_id FROM outbox")}


def prune_all(conn: sqlite3.Connection, retention: Retention, now: int) -> int:
    total = 0
    while deleted := prune_step(conn, retention, now):
        assert deleted <= retention.batch
        total += deleted
    return total


def test_done_sends_past_the_age_go_and_open_ones_stay(conn: sqlite3.Connection) -> None:
    for i in range(3):
        delivered(conn, f"old-{i}", T0)
    outbox.accept(conn, **request(client_message_id="waiting", now_ms=T0))
    delivered(conn, "recent", T0 + 6 * DAY_MS)
    assert prune_outbox(conn, WEEK, T0 + 7 * DAY_MS + 1) == 3
    assert keys(conn) == {"waiting", "recent"}
    assert count(conn, "deliveries") == 2  # the pruned rows' deliveries cascaded


def test_a_retry_inside_the_idempotency_window_finds_its_row_whatever_the_settings(
    conn: sqlite3.Connection,
) -> None:
    tight = Retention(days=0.001, rows=1, batch=100)
    for i in range(5):
        delivered(conn, f"k-{i}", T0)
    now = T0 + IDEMPOTENCY_WINDOW_MS - 1
    assert prune_all(conn, tight, now) == 0
    again = outbox.accept(conn, **request(client_message_id="k-0", now_ms=now))
    assert again.outcome == "duplicate"
    assert prune_all(conn, tight, T0 + IDEMPOTENCY_WINDOW_MS + 1) == 5
    assert keys(conn) == set()


def test_the_count_limit_drops_the_oldest_first_in_batches(conn: sqlite3.Connection) -> None:
    for i in range(25):
        delivered(conn, f"k-{i:02}", T0 + i)
    small = Retention(days=365, rows=10, batch=4)
    now = T0 + IDEMPOTENCY_WINDOW_MS + 100
    assert prune_outbox(conn, small, now) == 4
    assert prune_all(conn, small, now) == 11
    assert keys(conn) == {f"k-{i:02}" for i in range(15, 25)}


def test_dead_sends_stay_for_the_grace_period(conn: sqlite3.Connection) -> None:
    dead(conn, "dead", T0)
    delivered(conn, "done", T0)
    assert prune_all(conn, WEEK, T0 + 29 * DAY_MS) == 1
    assert keys(conn) == {"dead"}
    assert prune_all(conn, WEEK, T0 + 30 * DAY_MS + 1) == 1
    assert keys(conn) == set()


def test_inbox_messages_stay_while_a_sender_may_still_resend(conn: sqlite3.Connection) -> None:
    small = Retention(days=1, rows=1, batch=100)
    for i in range(3):
        receive(conn, client_message_id=f"m-{i}", now_ms=T0)
    assert prune_inbox(conn, small, T0 + INBOX_DEDUPE_WINDOW_MS - 1) == 0
    _, fresh = receive(conn, client_message_id="m-0", now_ms=T0 + INBOX_DEDUPE_WINDOW_MS - 1)
    assert not fresh  # still deduplicated
    assert prune_inbox(conn, small, T0 + INBOX_DEDUPE_WINDOW_MS + 1) == 2  # rows=1 keeps one
    assert count(conn, "inbox") == 1


def test_old_events_go_by_age(conn: sqlite3.Connection) -> None:
    events.append_batch(conn, [Event(i, "x", {}, T0 + i * DAY_MS) for i in range(1, 11)])
    assert prune_events(conn, WEEK, T0 + 10 * DAY_MS) == 2  # those at days 1 and 2
    assert events.since(conn, 0, 100).gap


def test_a_restart_skipping_ids_is_no_gap_when_retention_prunes_the_run_before(
    conn: sqlite3.Connection,
) -> None:
    events.resume_numbering(conn, ahead=21_000)
    events.append_batch(conn, [Event(i, "x", {}, T0) for i in range(1, 11)])
    resumed = events.resume_numbering(conn, ahead=21_000)  # ids jump past 21,000
    events.append_batch(conn, [Event(resumed + 1, "x", {}, T0 + 9 * DAY_MS)])
    assert prune_events(conn, WEEK, T0 + 9 * DAY_MS) == 10  # the whole first run
    caught_up = events.since(conn, 10, 100)  # a client that saw the first run's last event
    assert not caught_up.gap  # the ids it never saw were never logged either
    assert [e.event_id for e in caught_up.events] == [resumed + 1]
    assert events.since(conn, 9, 100).gap  # event 10 is gone


def test_events_retention_pruned_leave_room_in_the_log(conn: sqlite3.Connection) -> None:
    limit = events.EVENT_LOG_LIMIT
    events.append_batch(conn, [Event(i, "x", {}, T0 + i) for i in range(1, limit + 1)])
    assert prune_events(conn, WEEK, T0 + WEEK.age_ms + 101) == 100  # the log is not full now
    events.append_batch(conn, [Event(i, "x", {}, T0 + i) for i in range(limit + 1, limit + 51)])
    assert count(conn, "events") == limit - 50  # nothing pruned early: the log was counted
    events.append_batch(conn, [Event(i, "x", {}, T0 + i) for i in range(limit + 51, limit + 152)])
    assert count(conn, "events") == limit - events.PRUNE_BATCH  # one over: a batch goes


def test_counts_follow_every_change_including_cascades(conn: sqlite3.Connection) -> None:
    for i in range(4):
        delivered(conn, f"d-{i}", T0)
    dead(conn, "dead", T0)
    pending = outbox.accept(conn, **request(client_message_id="p", recipients=["a", "b"])).id
    outbox.mark_inflight(conn, [DeliveryKey(pending, "a")], T0)
    outbox.mark_due_now(conn, pending, "a", T0)
    receive(conn, client_message_id="m")
    receive(conn, client_message_id="m")  # a duplicate adds nothing
    while prune_outbox(conn, Retention(days=1, rows=2, batch=3), T0 + 2 * IDEMPOTENCY_WINDOW_MS):
        pass

    def actual(table: str, statuses: tuple[str, ...]) -> dict[str, int]:
        found = dict.fromkeys(statuses, 0)
        found.update(conn.execute(f"SELECT status, count(*) FROM {table} GROUP BY status"))
        return found

    statuses = ("pending", "inflight", "done", "dead")
    assert row_counts(conn, "deliveries", statuses) == actual("deliveries", statuses)
    assert row_counts(conn, "deliveries", statuses) == {
        "pending": 2,
        "inflight": 0,
        "done": 0,
        "dead": 1,  # the dead send is in its grace period
    }
    statuses = ("pending", "inflight", "done", "dead", "aborted")
    assert row_counts(conn, "outbox", statuses) == actual("outbox", statuses)
    assert row_counts(conn, "inbox", ("",)) == {"": 1}


def test_freed_pages_are_reused_so_the_file_stops_growing(conn: sqlite3.Connection) -> None:
    def fill(start: int) -> None:
        for i in range(400):
            delivered(conn, f"k-{start + i}", T0 + start + i)

    def pages() -> int:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])

    tight = Retention(days=0.001, rows=1, batch=500)
    fill(0)
    peak = pages()
    prune_all(conn, tight, T0 + 2 * IDEMPOTENCY_WINDOW_MS)
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 0
    for round_ in range(1, 4):
        fill(round_ * 1000)
        prune_all(conn, tight, T0 + 2 * IDEMPOTENCY_WINDOW_MS + round_ * 1000)
    assert pages() <= peak + 8  # a few pages of index churn, not three more fills


def test_a_version_1_database_is_migrated_with_its_counts(db_path: Path) -> None:
    raw = sqlite3.connect(db_path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("PRAGMA user_version = 1")
    raw.execute(
        "INSERT INTO outbox VALUES ('r1', 'net1', 'cm', x'00', 'peer', 'dev-a', 'next', 'hi',"
        " 'null', NULL, 'done', 1, 1, NULL, NULL)"
    )
    raw.execute("INSERT INTO deliveries VALUES ('r1', 'dev-a', 'done', 1, 1, NULL)")
    raw.execute(
        "INSERT INTO inbox VALUES (NULL, 'net1', 'dev-b', 'cm', 'hi', 'null', 'next', NULL, 1, 1)"
    )
    raw.close()
    conn = open_database(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert row_counts(conn, "outbox", ("done",)) == {"done": 1}
    assert row_counts(conn, "deliveries", ("done", "pending")) == {"done": 1, "pending": 0}
    assert row_counts(conn, "inbox", ("",)) == {"": 1}
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"deliveries_pending", "outbox_recent", "outbox_by_status"} <= indexes
    outbox.accept(conn, **request(client_message_id="new"))
    assert row_counts(conn, "outbox", ("pending",)) == {"pending": 1}
    conn.close()
