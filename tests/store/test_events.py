"""The event log: replay after an id, pruning in batches, and never hiding a gap."""

import sqlite3
from typing import Any

import pytest

from meshactors.store.events import (
    EVENT_LOG_LIMIT,
    MAX_REPLAY,
    MAX_REPLAY_BYTES,
    PRUNE_BATCH,
    Event,
    append_batch,
    last_event_id,
    resume_numbering,
    since,
)


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def log(conn: sqlite3.Connection, kind: str, data: dict[str, Any], at_ms: int) -> int:
    """Log one event numbered after the newest ever logged, as the event hub numbers them
    within a run; returns its id."""
    event_id = last_event_id(conn) + 1
    append_batch(conn, [Event(event_id, kind, data, at_ms)])
    return event_id


def fill(conn: sqlite3.Connection, n: int) -> None:
    for i in range(n):
        log(conn, "tick", {"i": i}, 1000 + i)


def test_since_replays_the_events_after_an_id(conn: sqlite3.Connection) -> None:
    assert last_event_id(conn) == 0
    ids = [log(conn, "peer_join", {"device": f"d{i}", "n": [i]}, 10 + i) for i in range(3)]
    assert ids == [1, 2, 3]
    assert last_event_id(conn) == 3
    result = since(conn, 1, limit=10)
    assert result.events == (
        Event(2, "peer_join", {"device": "d1", "n": [1]}, 11),
        Event(3, "peer_join", {"device": "d2", "n": [2]}, 12),
    )
    assert (result.gap, result.oldest_kept) == (False, 1)
    assert since(conn, 3, limit=10).events == ()
    assert [e.event_id for e in since(conn, 0, limit=2).events] == [1, 2]


def test_an_empty_log_has_no_gap(conn: sqlite3.Connection) -> None:
    result = since(conn, 0, limit=10)
    assert (result.events, result.gap, result.oldest_kept) == ((), False, None)


def test_the_log_is_pruned_in_batches_and_never_exceeds_its_limit(
    conn: sqlite3.Connection,
) -> None:
    fill(conn, EVENT_LOG_LIMIT)
    assert count(conn) == EVENT_LOG_LIMIT
    log(conn, "tick", {}, 99_999)  # one over: a whole batch goes
    assert count(conn) == EVENT_LOG_LIMIT - PRUNE_BATCH
    fill(conn, PRUNE_BATCH - 1)  # the next appends delete nothing
    assert count(conn) == EVENT_LOG_LIMIT - 1
    log(conn, "tick", {}, 99_999)
    assert count(conn) == EVENT_LOG_LIMIT
    log(conn, "tick", {}, 99_999)  # full again: the next batch goes
    assert count(conn) == EVENT_LOG_LIMIT - PRUNE_BATCH
    assert last_event_id(conn) == EVENT_LOG_LIMIT + PRUNE_BATCH + 2


def test_since_reports_a_gap_when_events_were_pruned(conn: sqlite3.Connection) -> None:
    fill(conn, EVENT_LOG_LIMIT + 1)
    oldest = PRUNE_BATCH + 2
    stale = since(conn, 0, limit=5)
    assert (stale.gap, stale.oldest_kept) == (True, oldest)
    assert [e.event_id for e in stale.events] == list(range(oldest, oldest + 5))
    assert since(conn, oldest - 2, limit=5).gap
    caught_up = since(conn, oldest - 1, limit=5)
    assert not caught_up.gap
    assert caught_up.events[0].event_id == oldest


def test_replay_size_is_capped(conn: sqlite3.Connection) -> None:
    fill(conn, MAX_REPLAY + 1)
    assert len(since(conn, 0, limit=MAX_REPLAY).events) == MAX_REPLAY
    with pytest.raises(ValueError, match="limit"):
        since(conn, 0, limit=MAX_REPLAY + 1)


def test_a_read_holds_at_most_its_bytes_and_says_more_are_left(conn: sqlite3.Connection) -> None:
    third = "x" * (MAX_REPLAY_BYTES // 3)
    for n in range(4):
        log(conn, "big", {"n": n, "pad": third}, n)
    first = since(conn, 0, limit=MAX_REPLAY)
    assert [e.data["n"] for e in first.events] == [0, 1]  # a third would pass the bytes limit
    assert first.more
    rest = since(conn, first.events[-1].event_id, limit=MAX_REPLAY)
    assert ([e.data["n"] for e in rest.events], rest.more) == ([2, 3], False)


def test_a_read_counts_the_bytes_of_non_ascii_data_not_its_characters(
    conn: sqlite3.Connection,
) -> None:
    third = "é" * (MAX_REPLAY_BYTES // 6)  # 2 bytes each: a third of the limit, in bytes
    for n in range(4):
        log(conn, "big", {"n": n, "pad": third}, n)
    first = since(conn, 0, limit=MAX_REPLAY)
    assert [e.data["n"] for e in first.events] == [0, 1]  # a third would pass the bytes limit
    assert first.more


def test_an_event_larger_than_a_read_is_read_alone(conn: sqlite3.Connection) -> None:
    huge = "x" * (MAX_REPLAY_BYTES + 1)
    for n in range(2):
        log(conn, "huge", {"n": n, "pad": huge}, n)
    assert [e.data["n"] for e in since(conn, 0, limit=MAX_REPLAY).events] == [0]
    assert [e.data["n"] for e in since(conn, 1, limit=MAX_REPLAY).events] == [1]


def test_a_read_cut_by_its_count_says_more_may_be_left(conn: sqlite3.Connection) -> None:
    fill(conn, 3)
    assert since(conn, 0, limit=3).more  # as many as asked: whether more follow is not known
    assert not since(conn, 0, limit=4).more


def test_bad_arguments_are_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="event_id"):
        since(conn, -1, limit=10)
    with pytest.raises(ValueError, match="limit"):
        since(conn, 0, limit=0)


def test_append_batch_keeps_the_given_ids(conn: sqlite3.Connection) -> None:
    append_batch(conn, [Event(5, "a", {"n": 1}, 10), Event(6, "b", {}, 11)])
    assert last_event_id(conn) == 6
    result = since(conn, 4, 10)
    assert [(e.event_id, e.kind, e.data) for e in result.events] == [
        (5, "a", {"n": 1}),
        (6, "b", {}),
    ]


def test_numbering_resumes_past_every_id_logged_or_marked_spent(conn: sqlite3.Connection) -> None:
    assert resume_numbering(conn, ahead=100) == 0  # a new log; ids 1-100 marked spent
    append_batch(conn, [Event(1, "a", {}, 10)])  # id 1 logged, ids 2-100 maybe sent unlogged
    assert resume_numbering(conn, ahead=100) == 100  # the mark, though the log ends at 1
    append_batch(conn, [Event(150, "b", {}, 11)], spend_to=250)
    assert resume_numbering(conn, ahead=100) == 250
    append_batch(conn, [Event(400, "c", {}, 12)])  # a log past its mark
    assert resume_numbering(conn, ahead=100) == 400
    assert [e.event_id for e in since(conn, 0, 10).events] == [1, 150, 400]


def test_the_spent_mark_never_moves_back(conn: sqlite3.Connection) -> None:
    resume_numbering(conn, ahead=100)  # ids 1-100 marked spent
    append_batch(conn, [Event(5, "a", {}, 10)], spend_to=50)
    assert resume_numbering(conn, ahead=0) == 100


def log_run(conn: sqlite3.Connection, count: int) -> list[int]:
    """What a daemon run does to the log: resume numbering past its mark (ids jump), then log
    `count` events in batches of PRUNE_BATCH; returns their ids."""
    first = resume_numbering(conn, ahead=21_000) + 1
    ids = list(range(first, first + count))
    for start in range(0, count, PRUNE_BATCH):
        append_batch(conn, [Event(i, "tick", {}, 10) for i in ids[start : start + PRUNE_BATCH]])
        assert count_events(conn) <= EVENT_LOG_LIMIT
    return ids


def count_events(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def test_a_restart_keeps_the_events_logged_before_it(conn: sqlite3.Connection) -> None:
    before = log_run(conn, 1_000)
    after = log_run(conn, 1_000)
    assert after[0] > before[-1] + EVENT_LOG_LIMIT  # the ids jumped
    replay = since(conn, before[0], MAX_REPLAY)
    assert not replay.gap
    assert [e.event_id for e in replay.events] == before[1:] + after[:1]


def test_the_newest_events_are_kept_across_restarts_and_never_more_than_the_limit(
    conn: sqlite3.Connection,
) -> None:
    logged: list[int] = []
    for _ in range(4):  # 14,000 events in all, the ids jumping three times
        logged += log_run(conn, 3_500)
    kept = [row[0] for row in conn.execute("SELECT event_id FROM events ORDER BY event_id")]
    assert kept == logged[-len(kept) :]  # the newest, whatever their ids
    assert EVENT_LOG_LIMIT - PRUNE_BATCH <= len(kept) <= EVENT_LOG_LIMIT


def test_a_log_pruned_before_it_recorded_what_it_pruned_still_reports_the_gap(
    conn: sqlite3.Connection,
) -> None:
    append_batch(conn, [Event(i, "tick", {}, 10) for i in range(501, 601)])  # 1-500 pruned
    conn.execute("DELETE FROM local_settings")  # as an older daemon left it
    resume_numbering(conn, ahead=100)
    assert since(conn, 499, 10).gap
    assert not since(conn, 500, 10).gap
