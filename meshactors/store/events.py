"""The event log: recent daemon events kept for replay to clients that subscribe late."""

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs

from meshactors.store.db import checked_limit, from_json, immediate, to_json
from meshactors.store.networks import GLOBAL, get_setting, put_setting

EVENT_LOG_LIMIT = 10_000  # events kept for replay; older ones are pruned
PRUNE_BATCH = 500  # events dropped per prune, so only every 500th append deletes anything
MAX_REPLAY = 1_000  # events one `since` call returns
MAX_REPLAY_BYTES = 1024 * 1024  # ... and their logged data's bytes (the first event always)
SPENT_KEY = "event_ids_spent"  # GLOBAL setting: no event id up to it is ever handed out again
# GLOBAL setting: how many events the log holds, at most (retention deletes without lowering it)
ROWS_KEY = "event_log_rows"
# GLOBAL setting: the newest event id the log lost, pruned or never written (named when only
# pruning lost any)
LOST_KEY = "event_log_pruned"


@attrs.frozen
class Event:
    """One logged event; event_id increases and is never reused."""

    event_id: int
    kind: str
    data: dict[str, Any]
    at_ms: int


@attrs.frozen
class SinceResult:
    """Events after a client's last seen id, and whether pruning left a hole before them."""

    events: tuple[Event, ...]
    gap: bool  # events after the asked id were pruned, or never logged: they cannot be replayed
    # the newest id the log lost, pruned or never logged (0: none): the events after it have
    # no hole between them, so a replay tells of the gap just before the first of them
    lost_through: int
    oldest_kept: int | None  # the oldest event_id still in the log (None: log empty)
    more: bool  # a limit cut the read short: events after the last one may be left


def append_batch(
    conn: sqlite3.Connection,
    batch: Sequence[Event],
    spend_to: int | None = None,
    lost: int | None = None,
) -> None:
    """Log events whose ids the caller already assigned (increasing, past the spent mark: the
    event hub numbers them), keeping at most EVENT_LOG_LIMIT (see `_keep_newest`); with
    `spend_to`, mark every id up to it spent in the same transaction; with `lost`, record
    that the event of that id (and maybe others before it) will never be logged."""
    with immediate(conn):
        if spend_to is not None:
            _mark_spent(conn, spend_to)
        if lost is not None:
            note_lost(conn, lost)
        if not batch:
            return
        conn.executemany(
            "INSERT INTO events (event_id, kind, data_json, at_ms) VALUES (?, ?, ?, ?)",
            [(e.event_id, e.kind, to_json(e.data), e.at_ms) for e in batch],
        )
        _keep_newest(conn, added=len(batch))


def _keep_newest(conn: sqlite3.Connection, added: int) -> None:
    """Count `added` new events into the log's row count and, once the log holds more than
    EVENT_LOG_LIMIT, prune it to its newest EVENT_LOG_LIMIT - PRUNE_BATCH. Ids jump at each
    restart, so their span says nothing of the count; the count kept beside the log does,
    so a write neither counts nor scans the log. It only over-counts (retention deletes
    without lowering it), so the log is counted before anything is pruned."""
    known = get_setting(conn, GLOBAL, ROWS_KEY)
    rows = known + added if isinstance(known, int) else None
    if rows is None or rows > EVENT_LOG_LIMIT:
        rows = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    if rows > EVENT_LOG_LIMIT:
        (cut,) = conn.execute(
            "SELECT event_id FROM events ORDER BY event_id DESC LIMIT 1 OFFSET ?",
            (EVENT_LOG_LIMIT - PRUNE_BATCH,),
        ).fetchone()
        conn.execute("DELETE FROM events WHERE event_id <= ?", (cut,))
        note_lost(conn, cut)
        rows = EVENT_LOG_LIMIT - PRUNE_BATCH
    put_setting(conn, GLOBAL, ROWS_KEY, rows)


def note_lost(conn: sqlite3.Connection, upto: int) -> None:
    """Record that the log lost events up to id `upto` (pruned them, or never got them), so a
    replay after an earlier id reports the gap (ids jump at a restart, so the oldest kept id
    cannot tell)."""
    put_setting(conn, GLOBAL, LOST_KEY, max(upto, _through(conn, LOST_KEY)))


def _through(conn: sqlite3.Connection, key: str) -> int:
    """The event id a GLOBAL mark (LOST_KEY, SPENT_KEY) reaches (0: never stored)."""
    mark = get_setting(conn, GLOBAL, key)
    return mark if isinstance(mark, int) else 0


def since(conn: sqlite3.Connection, event_id: int, limit: int) -> SinceResult:
    """Up to `limit` (capped at MAX_REPLAY) events after `event_id`, oldest first, and past
    the first no more than MAX_REPLAY_BYTES of logged data, so a replay holds a bounded
    amount however large the events; `more` says either limit cut the read short.

    `gap` is True when some events after `event_id` were already pruned, or sent live but
    never logged (`note_lost`): the client missed them for good and must resynchronise some
    other way. Pass 0 to mean "from the beginning of time". Ids the log never held that were
    never sent (those skipped at a restart) are no gap.
    """
    if event_id < 0:
        raise ValueError(f"event_id must be at least 0, got {event_id}")
    limit = checked_limit(limit, MAX_REPLAY)
    events: list[Event] = []
    size, more = 0, False
    with contextlib.closing(
        conn.execute(
            "SELECT event_id, kind, data_json, at_ms, length(CAST(data_json AS BLOB))"
            " FROM events WHERE event_id > ? ORDER BY event_id LIMIT ?",
            (event_id, limit),
        )
    ) as rows:
        for row in rows:  # read one at a time: the rows past the byte limit stay unread
            size += row[4]  # its UTF-8 bytes: data_json keeps non-ASCII text unescaped
            if events and size > MAX_REPLAY_BYTES:
                more = True
                break
            events.append(Event(row[0], row[1], from_json(row[2]), row[3]))
    oldest_kept: int | None = conn.execute("SELECT min(event_id) FROM events").fetchone()[0]
    lost_through = _through(conn, LOST_KEY)
    return SinceResult(
        events=tuple(events),
        gap=lost_through > event_id,
        lost_through=lost_through,
        oldest_kept=oldest_kept,
        more=more or len(events) == limit,
    )


def resume_numbering(conn: sqlite3.Connection, ahead: int) -> int:
    """The id to number on from: past every id logged or marked spent, so past every id an
    earlier run may have sent live before its log write (the hub sends only spent ids); the
    next `ahead` ids are marked spent, for this run to send before its first write. A log
    pruned before it recorded what it pruned has consecutive ids, so its oldest kept id (or
    its newest, once empty) says that."""
    with immediate(conn):
        resume = max(last_event_id(conn), _through(conn, SPENT_KEY))
        _mark_spent(conn, resume + ahead)
        if get_setting(conn, GLOBAL, LOST_KEY) is None:
            oldest = conn.execute("SELECT min(event_id) FROM events").fetchone()[0]
            note_lost(conn, last_event_id(conn) if oldest is None else oldest - 1)
    return resume


def _mark_spent(conn: sqlite3.Connection, upto: int) -> None:
    """Record that ids up to `upto` may have been sent, so no later run hands them out; the
    mark never moves back (a lower `upto` leaves it)."""
    put_setting(conn, GLOBAL, SPENT_KEY, max(upto, _through(conn, SPENT_KEY)))


def last_event_id(conn: sqlite3.Connection) -> int:
    """The id of the newest event ever logged, pruned or not (0 before the first)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])
