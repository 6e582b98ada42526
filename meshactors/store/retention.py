"""Retention: prune finished sends, old inbox messages and old events in small batches.

Each `prune_*` call deletes at most `Retention.batch` rows in one transaction, walking an
index from the oldest end, so pruning never holds the write lock long and never scans the
rows it keeps. The outbox actor calls `prune_step` periodically until it finds no more work.
Rows the idempotency tables still need are never pruned, whatever the settings:
- an outbox row younger than IDEMPOTENCY_WINDOW_MS (a retried `send` with the same
  client_message_id is answered from it);
- an inbox message received less than INBOX_DEDUPE_WINDOW_MS ago (a sender resends a message
  whose ack it did not get until its send TTL ends; the inbox row makes that a duplicate).
Freed pages are reused by later inserts, so at a steady load the file stops growing.
"""

import sqlite3

import attrs

from meshactors.store import events
from meshactors.store.db import immediate, row_counts
from meshactors.store.outbox import TTL_MS, delete_sends

DAY_MS = 24 * 60 * 60 * 1000
IDEMPOTENCY_WINDOW_MS = DAY_MS  # outbox rows younger than this are kept: a retry finds them
INBOX_DEDUPE_WINDOW_MS = TTL_MS + DAY_MS  # a sender's TTL, plus a day for clock skew
RETENTION_DAYS = 7.0  # default age past which finished history goes (`--retention-days`)
RETENTION_ROWS = 100_000  # default rows of finished history kept (`--retention-rows`)
MAX_RETENTION_DAYS = 36_500.0  # the longest `--retention-days` (a century)
MAX_RETENTION_ROWS = 10**12  # the most `--retention-rows`
DEAD_GRACE_DAYS = 30.0  # default time dead sends are kept for `outbox requeue`
PRUNE_BATCH_ROWS = 500  # rows one prune transaction deletes at most
FINISHED = ("done", "aborted")  # outbox statuses pruned by age and count
DEAD = "dead"  # outbox status pruned after the grace period (or by count)


@attrs.frozen
class Retention:
    """How much finished history the state database keeps (age and count).

    `days`: done and aborted sends, inbox messages and logged events older than this go;
    `rows`: at most this many done, aborted and dead sends each, and inbox messages, are kept
    (oldest go first); `dead_grace_days`: dead sends are kept this long for `outbox requeue`.
    The idempotency windows above override all three.
    """

    days: float = attrs.field(default=RETENTION_DAYS, validator=attrs.validators.gt(0))
    rows: int = attrs.field(default=RETENTION_ROWS, validator=attrs.validators.gt(0))
    dead_grace_days: float = attrs.field(default=DEAD_GRACE_DAYS, validator=attrs.validators.gt(0))
    batch: int = attrs.field(default=PRUNE_BATCH_ROWS, validator=attrs.validators.gt(0))

    @property
    def age_ms(self) -> int:
        return int(self.days * DAY_MS)

    @property
    def dead_grace_ms(self) -> int:
        return int(self.dead_grace_days * DAY_MS)


def prune_step(conn: sqlite3.Connection, retention: Retention, now_ms: int) -> int:
    """One bounded pruning step: the first of outbox, inbox, events with anything to prune
    loses at most `retention.batch` rows. Returns the rows deleted (0: nothing left to do)."""
    for prune in (prune_outbox, prune_inbox, prune_events):
        deleted = prune(conn, retention, now_ms)
        if deleted:
            return deleted
    return 0


def prune_outbox(conn: sqlite3.Connection, retention: Retention, now_ms: int) -> int:
    """Delete up to `batch` finished sends (their deliveries cascade): any beyond `rows` of
    their status, then done and aborted past `days` and dead past `dead_grace_days`, oldest
    first; never one younger than IDEMPOTENCY_WINDOW_MS. Pending and inflight rows stay."""
    counts = row_counts(conn, "outbox", (*FINISHED, DEAD))
    kept_after = now_ms - IDEMPOTENCY_WINDOW_MS
    with immediate(conn):
        for status in (*FINISHED, DEAD):
            age = retention.dead_grace_ms if status == DEAD else retention.age_ms
            over = min(counts[status] - retention.rows, retention.batch)
            for before, limit in (
                (kept_after, over),
                (min(kept_after, now_ms - age), retention.batch),
            ):
                if limit <= 0:
                    continue
                deleted = _delete_sends(conn, status, before, limit)
                if deleted:
                    return deleted
    return 0


def _delete_sends(conn: sqlite3.Connection, status: str, before: int, limit: int) -> int:
    """Delete up to `limit` of the oldest sends of `status` created before `before`."""
    oldest = conn.execute(
        "SELECT id FROM outbox INDEXED BY outbox_by_status"
        " WHERE status = ? AND created_at < ? ORDER BY created_at, id LIMIT ?",
        (status, before, limit),
    )
    return delete_sends(conn, [row[0] for row in oldest])


def prune_inbox(conn: sqlite3.Connection, retention: Retention, now_ms: int) -> int:
    """Delete up to `batch` of the oldest inbox messages that are past `days` or beyond
    `rows`, never one received less than INBOX_DEDUPE_WINDOW_MS ago. Looks only at the
    `batch` oldest messages (by seq), so a young oldest message ends the step cheaply."""
    over = row_counts(conn, "inbox", ("",))[""] - retention.rows
    before = now_ms - INBOX_DEDUPE_WINDOW_MS
    if over <= 0:
        before = min(before, now_ms - retention.age_ms)
    with immediate(conn):
        return conn.execute(
            "DELETE FROM inbox WHERE seq IN (SELECT seq FROM (SELECT seq, received_at FROM inbox"
            " WHERE seq >= (SELECT min(seq) FROM inbox) ORDER BY seq LIMIT ?)"
            " WHERE received_at < ?)",
            (min(retention.batch, over) if over > 0 else retention.batch, before),
        ).rowcount


def prune_events(conn: sqlite3.Connection, retention: Retention, now_ms: int) -> int:
    """Delete up to `batch` of the oldest logged events past `days` (their count is bounded
    by events.EVENT_LOG_LIMIT as they are written), recording the newest pruned for `since`."""
    with immediate(conn):
        pruned = conn.execute(
            "DELETE FROM events WHERE event_id IN (SELECT event_id FROM (SELECT event_id, at_ms"
            " FROM events WHERE event_id >= (SELECT min(event_id) FROM events)"
            " ORDER BY event_id LIMIT ?) WHERE at_ms < ?) RETURNING event_id",
            (retention.batch, now_ms - retention.age_ms),
        ).fetchall()
        if pruned:
            events.note_lost(conn, max(row[0] for row in pruned))
        return len(pruned)
