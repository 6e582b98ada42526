"""The durable outbox: idempotent accept, per-recipient deliveries with backoff, recovery, requeue,
abort.

A send is one `outbox` row plus one `deliveries` row per recipient. The row's status is
derived from its deliveries (see `derive_status`) and stored, except `aborted`, which only
`requeue` and `abort` set and nothing changes afterwards. Every function here that adds,
removes or moves rows between statuses bumps their row_counts in the same transaction
(`bump_counts`).
"""

import collections
import contextlib
import random
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs

from meshactors.store.db import (
    bump_counts,
    checked_limit,
    from_json,
    immediate,
    row_counts,
    to_json,
)
from meshactors.store.fingerprint import (
    fingerprint_prefix,
    mint_client_message_id,
    request_fingerprint,
)
from meshactors.wire.ipc import MAX_PAGE, MAX_PAGE_DATA_BYTES, PRIORITIES, within_page_bytes

DESTINATION_KINDS = ("peer", "all", "tag")
ROW_STATUSES = ("pending", "inflight", "done", "dead", "aborted")
UNSENT = ("pending", "inflight")  # statuses of a send not yet delivered to every recipient
ABORTABLE = (*UNSENT, "dead")  # row statuses `abort` takes: not done, not aborted already
MAX_ATTEMPTS = 20  # a delivery that failed this many times is dead
TTL_MS = 7 * 24 * 60 * 60 * 1000  # a send older than a week is dead at its next failure
BACKOFF_BASE_MS = 500  # ceiling of the first retry's random wait; doubles per attempt
BACKOFF_CAP_MS = 5 * 60 * 1000  # no retry waits longer than five minutes
MAX_RECIPIENTS = 4096  # deliveries rows one accept may write, bounding its transaction
MAX_CLIENT_MESSAGE_ID_CHARS = 128  # caller-chosen idempotency keys (a minted ULID has 26)
EXPIRE_BATCH = 500  # sends one expire_pending call makes dead, bounding its transaction
# Deliveries one expire_pending call makes dead: each is told in an event, and a batch this
# size fits the event hub's inbox with room to spare. It may cut a send short: that send's
# other recipients die in the next call (`Expired.more`).
EXPIRE_DELIVERIES = MAX_RECIPIENTS
EXPIRED = "expired"  # last_error of pending deliveries that outlived TTL_MS (expire_pending)
EVICTED = "evicted"  # last_error of deliveries an evict made undeliverable (bury_evicted)
ABORTED = "aborted"  # last_error of the open deliveries of a send the user aborted (abort)
# a listed delivery's JSON besides its recipient and last_error (status, attempts, next
# attempt, keys), about: what each counts toward a listing's MAX_PAGE_DATA_BYTES
LISTED_DELIVERY_BYTES = 100

_PRIORITY_RANK = "CASE o.priority WHEN 'now' THEN 0 WHEN 'next' THEN 1 ELSE 2 END"
# the key a row goes out under, which its recipients dedupe on: a requeued send's first key
_ORIGIN_KEY = "coalesce({t}origin_client_message_id, {t}client_message_id)"
# the rows of the one parameter, a JSON list of pairs, for `(a, b) IN (...)` (`_key_pairs`)
_PAIRS = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1)"
_DUE_COLUMNS = (
    f"d.outbox_id, d.recipient, o.network, {_ORIGIN_KEY.format(t='o.')}, o.destination_kind,"
    " o.destination_ref, o.priority, o.message, o.meta_json, o.reply_to_id, d.attempts,"
    " o.created_at"
)
_ROW_COLUMNS = (
    "id, network, client_message_id, request_fingerprint, destination_kind, destination_ref,"
    " priority, message, meta_json, reply_to_id, status, created_at, updated_at, last_error,"
    " superseded_by"
)
_ROW_READ = f"{_ROW_COLUMNS}, {_ORIGIN_KEY.format(t='')}"  # a row as OutboxRow holds it


class SendError(Exception):
    """A send that cannot be accepted, found, requeued or aborted; `code` is stable for clients.

    Codes: no_recipients, invalid_request, conflict, not_found, not_requeueable.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class AcceptOutcome:
    """What `accept` decided: a new or matching send (accepted), an already-sent one
    (duplicate), or a reuse of the key that cannot be honoured (conflict, with `reason`)."""

    outcome: Literal["accepted", "duplicate", "conflict"]
    id: str  # the outbox row holding this client_message_id
    client_message_id: str
    status: str  # that row's status
    reason: str | None  # '<status>_fingerprint_match' or '..._mismatch' for a conflict
    fingerprint_prefix: str  # of the request just made
    claimed: tuple["Delivery", ...] = ()  # deliveries of a new row claimed as it was accepted


@attrs.frozen
class DeliveryKey:
    """Names one recipient's copy of a send."""

    outbox_id: str
    recipient: str


@attrs.frozen
class Delivery:
    """A due delivery with everything the drainer needs to send it."""

    outbox_id: str
    recipient: str
    network: str
    client_message_id: str  # the key it goes out under: its row's origin_client_message_id
    destination_kind: str
    destination_ref: str
    priority: str
    message: str
    meta: dict[str, Any] | None
    reply_to_id: str | None
    attempts: int
    created_at: int

    @property
    def key(self) -> DeliveryKey:
        """The key mark_inflight takes."""
        return DeliveryKey(self.outbox_id, self.recipient)


@attrs.frozen
class RecipientState:
    """How one recipient's delivery of a send stands."""

    recipient: str
    status: str
    attempts: int
    next_attempt_at: int
    last_error: str | None


@attrs.frozen
class OutboxRow:
    """One send as the operator sees it, with each recipient's delivery."""

    id: str
    network: str
    client_message_id: str
    request_fingerprint: bytes
    destination_kind: str
    destination_ref: str
    priority: str
    message: str
    meta: dict[str, Any] | None
    reply_to_id: str | None
    status: str
    created_at: int
    updated_at: int
    last_error: str | None
    superseded_by: str | None
    # the key its recipients see and dedupe on: its own, or for a requeue the first send's
    origin_client_message_id: str
    deliveries: tuple[RecipientState, ...]


@attrs.frozen
class SendRequest:
    """One send to accept durably: its network, resolved recipients, destination and content
    (a missing client_message_id is minted), stamped when the request came."""

    network: str
    recipients: Sequence[str]
    destination_kind: str
    destination_ref: str
    message: str
    priority: str
    meta: dict[str, Any] | None
    reply_to_id: str | None
    client_message_id: str | None
    now_ms: int


def accept(
    conn: sqlite3.Connection, *, room: dict[str, int] | None = None, **fields: Any
) -> AcceptOutcome:
    """`accept_many` for one request (`fields` as SendRequest's); a refusal is raised."""
    (outcome,) = accept_many(conn, [SendRequest(**fields)], room)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def accept_many(
    conn: sqlite3.Connection,
    requests: Sequence[SendRequest],
    room: dict[str, int] | None = None,
) -> list[AcceptOutcome | Exception]:
    """Durably accept each send, in order, or answer a repeat of one by the lookup table
    below; a refused request (SendError, ValueError) is its own outcome and writes nothing.

    An existing row with the same (network, client_message_id), or one an earlier request of
    the call wrote, decides, by its status and whether the new request's fingerprint matches:
    pending/inflight + match → accepted; done + match → duplicate; every other cell →
    conflict '<status>_fingerprint_<match|mismatch>'. Only a new row needs recipients. `room`
    (the drainer's places per active peer, spent here) claims a new row's delivery at once,
    as `mark_inflight` would, for a recipient with a place and nothing queued before it: the
    row is written inflight instead of pending and claimed again by nobody, so the drainer
    sends it without a claim of its own. The keys are looked up in one statement and the
    new rows written in a few for the whole call, whatever its length.
    """
    checked: list[_Checked | SendError | ValueError] = []
    for request in requests:
        try:
            checked.append(_checked(request))
        except (SendError, ValueError) as exc:
            checked.append(exc)
    outcomes: list[AcceptOutcome | Exception] = []
    with immediate(conn):
        keys = [(item.request.network, item.key) for item in checked if isinstance(item, _Checked)]
        taken = _taken_keys(conn, keys)
        inserts = _Inserts()
        for item in checked:
            if not isinstance(item, _Checked):
                outcomes.append(item)
                continue
            request, key, fp = item.request, item.key, item.fingerprint
            existing = taken.get((request.network, key))
            if existing is not None:
                row_id, status, stored_fp = existing
                outcomes.append(
                    _decide(row_id, key, status, stored_fp == fp, fingerprint_prefix(fp))
                )
                continue
            if not request.recipients:
                outcomes.append(
                    SendError(
                        "no_recipients",
                        f"no recipients for {request.destination_kind} {request.destination_ref!r}",
                    )
                )
                continue
            claimed = inserts.add(conn, item, room)
            taken[request.network, key] = (item.row_id, "inflight" if claimed else "pending", fp)
            outcomes.append(_accepted(item, claimed))
        inserts.write(conn)
    return outcomes


@attrs.frozen
class _Checked:
    """A request that passed the checks, with what its row would be written under."""

    request: SendRequest  # its recipients made unique
    key: str  # its client_message_id, or one minted
    fingerprint: bytes
    row_id: str  # minted for it, used if it makes a new row
    origin: str | None = None  # the key it goes out under, when not `key` (a requeue)


def _checked(request: SendRequest) -> _Checked:
    """The request checked, keyed and fingerprinted; SendError or ValueError for one that
    cannot be accepted."""
    _check_choice("destination_kind", request.destination_kind, DESTINATION_KINDS)
    _check_choice("priority", request.priority, PRIORITIES)
    if request.client_message_id is not None:
        _check_client_message_id(request.client_message_id)
    unique = list(dict.fromkeys(request.recipients))
    if len(unique) > MAX_RECIPIENTS:
        raise SendError("invalid_request", f"{len(unique)} recipients, at most {MAX_RECIPIENTS}")
    fp = request_fingerprint(
        destination_kind=request.destination_kind,
        destination_ref=request.destination_ref,
        reply_to_id=request.reply_to_id,
        priority=request.priority,
        meta=request.meta,
        body=request.message.encode("utf-8"),
    )
    key = request.client_message_id
    if key is None:
        key = mint_client_message_id(request.now_ms)
    row_id = mint_client_message_id(request.now_ms)
    return _Checked(attrs.evolve(request, recipients=unique), key, fp, row_id)


def _taken_keys(
    conn: sqlite3.Connection, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str, bytes]]:
    """The rows already holding the (network, client_message_id) keys, in one statement:
    (network, key) → (id, status, fingerprint). A key no row holds as its own is still held by
    a requeue that goes out under it (its origin, once retention deleted the first row): a new
    send under it would reach the recipients as that requeue and be deduped away. The row
    holding it as its own decides, else the chain's last requeue."""
    if not keys:
        return {}
    wanted = to_json([list(key) for key in keys])
    rows = conn.execute(
        "SELECT network, client_message_id, id, status, request_fingerprint, 2 AS rank"
        f" FROM outbox WHERE (network, client_message_id) IN ({_PAIRS})"
        " UNION ALL SELECT network, origin_client_message_id, id, status, request_fingerprint,"
        " superseded_by IS NULL FROM outbox INDEXED BY outbox_by_origin"
        " WHERE origin_client_message_id IS NOT NULL"
        f" AND (network, origin_client_message_id) IN ({_PAIRS}) ORDER BY rank",
        (wanted,),
    )
    return {(network, key): (row_id, status, fp) for network, key, row_id, status, fp, _ in rows}


def _accepted(item: _Checked, claimed: Sequence[str]) -> AcceptOutcome:
    """The outcome of a new row, with the deliveries its accept claimed."""
    request, row_id, key = item.request, item.row_id, item.key
    deliveries = tuple(
        Delivery(
            outbox_id=row_id,
            recipient=recipient,
            network=request.network,
            client_message_id=key,
            destination_kind=request.destination_kind,
            destination_ref=request.destination_ref,
            priority=request.priority,
            message=request.message,
            meta=request.meta,
            reply_to_id=request.reply_to_id,
            attempts=0,
            created_at=request.now_ms,
        )
        for recipient in claimed
    )
    status = "inflight" if deliveries else "pending"
    prefix = fingerprint_prefix(item.fingerprint)
    return AcceptOutcome("accepted", row_id, key, status, None, prefix, deliveries)


def derive_status(delivery_statuses: Collection[str]) -> str:
    """A row's status from its deliveries' statuses: any inflight → inflight; all done → done;
    all terminal (done or dead) with at least one dead → dead; otherwise pending."""
    if "inflight" in delivery_statuses:
        return "inflight"
    if all(status == "done" for status in delivery_statuses):
        return "done"
    if all(status in ("done", "dead") for status in delivery_statuses):
        return "dead"
    return "pending"


def due_deliveries(
    conn: sqlite3.Connection,
    *,
    now_ms: int,
    limit: int,
    network: str | None = None,
    recipients: Collection[str] | None = None,
) -> list[Delivery]:
    """Pending deliveries whose next attempt is due, by priority ('now' first) then age.

    `recipients` keeps only deliveries to those devices (the drainer passes the active
    peers, so a long queue for an offline peer never hides due work for an online one); with
    it each peer's queue is walked in order (index deliveries_queue: rank, then row id) and
    the walk stops after `limit`, so the cost is bounded by what is returned, not by the
    backlog; without it every due delivery is walked (deliveries_due). Never the history.
    """
    limit = checked_limit(limit, MAX_PAGE)
    if recipients is None:
        rows = conn.execute(
            f"SELECT {_DUE_COLUMNS} FROM deliveries d INDEXED BY deliveries_due"
            " CROSS JOIN outbox o ON o.id = d.outbox_id"
            " WHERE d.status = 'pending' AND d.next_attempt_at <= :now"
            " AND (:network IS NULL OR o.network = :network)"
            f" ORDER BY {_PRIORITY_RANK}, o.created_at, o.id, d.recipient LIMIT :limit",
            {"now": now_ms, "network": network, "limit": limit},
        ).fetchall()
    else:
        rows = [
            row
            for recipient in sorted(set(recipients))
            for row in conn.execute(
                f"SELECT {_DUE_COLUMNS} FROM deliveries d INDEXED BY deliveries_queue"
                " CROSS JOIN outbox o ON o.id = d.outbox_id"
                " WHERE d.recipient = :recipient AND d.status = 'pending'"
                " AND d.next_attempt_at <= :now AND (:network IS NULL OR o.network = :network)"
                " ORDER BY d.rank, d.outbox_id LIMIT :limit",
                {"recipient": recipient, "now": now_ms, "network": network, "limit": limit},
            )
        ]
        rows.sort(key=lambda row: (PRIORITIES.index(row[6]), row[11], row[0], row[1]))
        del rows[limit:]
    return [
        Delivery(
            outbox_id=row[0],
            recipient=row[1],
            network=row[2],
            client_message_id=row[3],
            destination_kind=row[4],
            destination_ref=row[5],
            priority=row[6],
            message=row[7],
            meta=from_json(row[8]),
            reply_to_id=row[9],
            attempts=row[10],
            created_at=row[11],
        )
        for row in rows
    ]


def next_due_at(
    conn: sqlite3.Connection, *, network: str, recipients: Collection[str]
) -> int | None:
    """When the earliest pending delivery to one of `recipients` in `network` is due (ms),
    or None when there is none: how long the drainer may sleep. Walks only those peers'
    pending deliveries (index deliveries_pending), never finished ones."""
    row = conn.execute(
        "SELECT min(d.next_attempt_at) FROM deliveries d INDEXED BY deliveries_pending"
        " CROSS JOIN outbox o ON o.id = d.outbox_id"
        " WHERE d.status = 'pending' AND o.network = ?"
        " AND d.recipient IN (SELECT value FROM json_each(?))",
        (network, to_json(sorted(recipients))),
    ).fetchone()
    return None if row[0] is None else int(row[0])


@attrs.frozen
class Expired:
    """What one `expire_pending` or `bury_evicted` call made dead: each delivery, and
    whether a bound cut it short (`more`: call again)."""

    deliveries: list[DeliveryKey]
    more: bool


def expire_pending(
    conn: sqlite3.Connection,
    *,
    now_ms: int,
    ttl_ms: int = TTL_MS,
    batch: int = EXPIRE_BATCH,
    deliveries: int = EXPIRE_DELIVERIES,
) -> Expired:
    """Make up to `deliveries` pending deliveries of up to `batch` sends older than `ttl_ms`
    dead ('expired'), whether or not their recipient was ever reachable (a send cut short
    keeps the rest for the next call). A never-active peer ends here. Only open rows are
    walked, by index outbox_by_status: pending deliveries exist only in pending or inflight
    rows. A row with none pending (every open delivery on its way) is passed over, so it
    never takes a place in the batch from one that can expire; such rows are as many as the
    deliveries in flight at most."""
    with immediate(conn):
        outbox_ids = [
            row[0]
            for status in UNSENT
            for row in conn.execute(
                "SELECT id FROM outbox o WHERE status = ? AND created_at < ?"
                " AND EXISTS (SELECT 1 FROM deliveries d"
                " WHERE d.outbox_id = o.id AND d.status = 'pending')"
                " ORDER BY created_at LIMIT ?",
                (status, now_ms - ttl_ms, batch),
            )
        ][:batch]
        rows = conn.execute(
            "SELECT rowid, outbox_id, recipient, status FROM deliveries"
            " WHERE outbox_id IN (SELECT value FROM json_each(?)) AND status = 'pending'"
            " LIMIT ?",
            (to_json(outbox_ids), deliveries),
        ).fetchall()
        killed = _kill(conn, rows, now_ms, last_error=EXPIRED)
    sends = {key.outbox_id for key in killed}
    return Expired(killed, more=len(sends) == batch or len(killed) == deliveries)


def bury_evicted(
    conn: sqlite3.Connection,
    *,
    network: str,
    recipients: Collection[str] | None,
    now_ms: int,
    deliveries: int = EXPIRE_DELIVERIES,
) -> Expired:
    """Make up to `deliveries` open (pending or inflight) deliveries of `network` to
    `recipients`, or to anyone when None (this device was evicted), dead ('evicted'): an
    evicted device is never active again, so they could never be delivered. An attempt still
    in flight then settles as "already_dead", and a late ack still makes it done. Walks the
    open rows only (index outbox_by_status)."""
    with immediate(conn):
        rows = conn.execute(
            "SELECT d.rowid, d.outbox_id, d.recipient, d.status FROM outbox o"
            " INDEXED BY outbox_by_status"
            " JOIN deliveries d ON d.outbox_id = o.id"
            " WHERE o.status IN ('pending', 'inflight') AND o.network = :network"
            " AND d.status IN ('pending', 'inflight')"
            " AND (:everyone OR d.recipient IN (SELECT value FROM json_each(:recipients)))"
            " LIMIT :limit",
            {
                "network": network,
                "everyone": recipients is None,
                "recipients": to_json(sorted(recipients or ())),
                "limit": deliveries,
            },
        ).fetchall()
        killed = _kill(conn, rows, now_ms, last_error=EVICTED)
    return Expired(killed, more=len(killed) == deliveries)


def _kill(
    conn: sqlite3.Connection,
    rows: Sequence[tuple[int, str, str, str]],
    now_ms: int,
    *,
    last_error: str,
) -> list[DeliveryKey]:
    """Make the deliveries `rows` name (rowid, outbox_id, recipient, status) dead with
    `last_error` and untold (`mark_told` clears it once their `message_dead` is logged),
    refresh their sends' statuses and move their row_counts: the one ending that expiry,
    eviction and abort share. Call it inside the transaction that chose the rows."""
    conn.execute(
        "UPDATE deliveries SET status = 'dead', last_error = ?, untold = 1"
        " WHERE rowid IN (SELECT value FROM json_each(?))",
        (last_error, to_json([row[0] for row in rows])),
    )
    killed = [DeliveryKey(outbox_id, recipient) for _, outbox_id, recipient, _ in rows]
    _refresh_statuses(
        conn, dict.fromkeys(key.outbox_id for key in killed), now_ms, last_error=last_error
    )
    moved = collections.Counter(status for *_, status in rows)
    bump_counts(conn, _moved("deliveries", moved, "dead"))
    return killed


def untold_deaths(conn: sqlite3.Connection, *, limit: int) -> list[tuple[DeliveryKey, str]]:
    """Up to `limit` deliveries `_kill` made dead whose `message_dead` is not logged yet (a
    stop came between), each with its last_error; walks index deliveries_untold only."""
    rows = conn.execute(
        "SELECT outbox_id, recipient, last_error FROM deliveries INDEXED BY deliveries_untold"
        " WHERE untold = 1 AND status = 'dead' LIMIT ?",
        (limit,),
    )
    return [(DeliveryKey(outbox_id, recipient), error) for outbox_id, recipient, error in rows]


def still_untold(conn: sqlite3.Connection, keys: Sequence[DeliveryKey]) -> list[DeliveryKey]:
    """Those of `keys` (deaths) not told yet, in order: one told already (by the outbox's
    start, while the op that made it waited), or delivered after all, is left out; one whose
    row retention deleted meanwhile is kept (its death is known, its event still owed)."""
    told = set(
        conn.execute(
            "SELECT outbox_id, recipient FROM deliveries WHERE untold = 0"
            f" AND (outbox_id, recipient) IN ({_PAIRS})",
            (_key_pairs(keys),),
        )
    )
    return [key for key in keys if (key.outbox_id, key.recipient) not in told]


def mark_told(conn: sqlite3.Connection, keys: Sequence[DeliveryKey], now_ms: int) -> None:
    """Record that the deaths of `keys` are told (their `message_dead` events are logged)."""
    with immediate(conn):
        conn.execute(
            "UPDATE deliveries SET untold = 0 WHERE untold = 1 AND (outbox_id, recipient) IN"
            f" ({_PAIRS})",
            (_key_pairs(keys),),
        )


def _key_pairs(keys: Iterable[DeliveryKey]) -> str:
    """`keys` as a JSON list of [outbox_id, recipient] pairs, for json_each."""
    return to_json([[key.outbox_id, key.recipient] for key in dict.fromkeys(keys)])


def delivery_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many deliveries (kept) are in each status, for the outbox actor's figures; read
    from row_counts, so the cost does not grow with the rows kept."""
    return row_counts(conn, "deliveries", ("pending", "inflight", "done", "dead"))


def mark_due_now(conn: sqlite3.Connection, outbox_id: str, recipient: str, now_ms: int) -> bool:
    """Put an inflight delivery back to pending, due now, without counting a failed attempt:
    its peer left or came back, so the attempt's ack will not come. False when it was not
    inflight (already settled). The recipient dedupes if the attempt did arrive."""
    with immediate(conn):
        cursor = conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
            " WHERE outbox_id = ? AND recipient = ? AND status = 'inflight'",
            (now_ms, outbox_id, recipient),
        )
        if cursor.rowcount:
            bump_counts(conn, _moved("deliveries", {"inflight": 1}, "pending"))
            _refresh_status(conn, outbox_id, now_ms)
    return bool(cursor.rowcount)


def mark_inflight(
    conn: sqlite3.Connection, keys: Iterable[DeliveryKey], now_ms: int
) -> list[DeliveryKey]:
    """Claim pending deliveries for sending; returns the ones claimed (send only those).
    Nothing to claim takes no write lock (the drainer asks after every peer that comes up)."""
    keys = list(keys)
    if not keys:
        return []
    claimed = []
    with immediate(conn):
        for key in keys:
            cursor = conn.execute(
                "UPDATE deliveries SET status = 'inflight'"
                " WHERE outbox_id = ? AND recipient = ? AND status = 'pending'",
                (key.outbox_id, key.recipient),
            )
            if cursor.rowcount:
                claimed.append(key)
        # A row with an inflight delivery derives `inflight` (derive_status), and one with a
        # pending delivery was pending or inflight: set it without reading its deliveries
        # back, as _refresh_statuses would (an aborted row is neither, so it stays).
        started = conn.execute(
            "UPDATE outbox SET status = 'inflight', updated_at = ?"
            " WHERE id IN (SELECT value FROM json_each(?)) AND status = 'pending'",
            (now_ms, to_json(list(dict.fromkeys(key.outbox_id for key in claimed)))),
        ).rowcount
        changes = _moved("deliveries", {"pending": len(claimed)}, "inflight")
        changes.update(_moved("outbox", {"pending": started}, "inflight"))
        bump_counts(conn, changes)
    return claimed


def mark_delivered_many(
    conn: sqlite3.Connection, keys: Sequence[DeliveryKey], now_ms: int
) -> list[Literal["done", "already_done", "gone"]]:
    """Record that each key's recipient has the message, in order, in a few statements for the
    whole batch: "done" when this call finished the delivery, "already_done" when an earlier
    ack had (a repeated ack changes nothing; a key twice: the second), "gone" when no such
    delivery exists. Only "done" is news to publish."""
    if not keys:
        return []
    with immediate(conn):
        found: dict[tuple[str, str], str] = {
            (outbox_id, recipient): status
            for outbox_id, recipient, status in conn.execute(
                "SELECT outbox_id, recipient, status FROM deliveries"
                f" WHERE (outbox_id, recipient) IN ({_PAIRS})",
                (_key_pairs(keys),),
            )
        }
        finishing = [key for key, status in found.items() if status != "done"]
        conn.executemany(  # a late ack of a delivery made dead: done, no death left to tell
            "UPDATE deliveries SET status = 'done', untold = 0"
            " WHERE outbox_id = ? AND recipient = ?",
            finishing,
        )
        moved = collections.Counter(found[key] for key in finishing)
        bump_counts(conn, _moved("deliveries", moved, "done"))
        _refresh_statuses(conn, {outbox_id for outbox_id, _ in finishing}, now_ms)
    outcomes: list[Literal["done", "already_done", "gone"]] = []
    told: set[tuple[str, str]] = set()
    for key in keys:
        pair = (key.outbox_id, key.recipient)
        if pair not in found:
            outcomes.append("gone")
        elif found[pair] != "done" and pair not in told:
            told.add(pair)
            outcomes.append("done")
        else:
            outcomes.append("already_done")
    return outcomes


def backoff_ms(attempts: int, rand: Callable[[], float]) -> int:
    """Full-jitter exponential backoff: a uniform wait below min(cap, base * 2**(attempts-1))."""
    ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << min(max(attempts - 1, 0), 32))
    return int(rand() * ceiling)


def mark_failed(
    conn: sqlite3.Connection,
    outbox_id: str,
    recipient: str,
    *,
    error_code: str,
    permanent: bool,
    now_ms: int,
    max_attempts: int = MAX_ATTEMPTS,
    ttl_ms: int = TTL_MS,
    rand: Callable[[], float] = random.random,
) -> str | None:
    """Record a failed attempt: retry later with backoff, or give up (dead, with last_error)
    when the error is permanent, attempts reach max_attempts or the send outlived ttl_ms.

    Returns the delivery's new status, or None when no such delivery exists. A finished
    delivery is left as it is: "already_done" or "already_dead" (this attempt's failure came
    after an ack or an earlier failure had finished it, so it is no news).
    """
    with immediate(conn):
        found = conn.execute(
            "SELECT d.status, d.attempts, d.next_attempt_at, o.created_at"
            " FROM deliveries d JOIN outbox o ON o.id = d.outbox_id"
            " WHERE d.outbox_id = ? AND d.recipient = ?",
            (outbox_id, recipient),
        ).fetchone()
        if found is None:
            return None
        status, attempts, next_attempt_at, created_at = found
        if status in ("done", "dead"):
            return f"already_{status}"
        attempts += 1
        if permanent or attempts >= max_attempts or created_at + ttl_ms < now_ms:
            status = "dead"
        else:
            status, next_attempt_at = "pending", now_ms + backoff_ms(attempts, rand)
        conn.execute(
            "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?"
            " WHERE outbox_id = ? AND recipient = ?",
            (status, attempts, next_attempt_at, error_code, outbox_id, recipient),
        )
        bump_counts(conn, _moved("deliveries", {found[0]: 1}, status))
        _refresh_status(conn, outbox_id, now_ms, last_error=error_code)
    return str(status)


def due_now_to_peers(
    conn: sqlite3.Connection, network: str, recipients: Collection[str], now_ms: int
) -> int:
    """Make every pending delivery to peers that just became active (or all the active peers
    of a network, after a lagged watch) due now, in one transaction, cutting short the
    backoff of attempts that failed while they could not be reached; attempts are kept.
    Walks index deliveries_pending (those peers' deliveries not yet due). Returns how many."""
    with immediate(conn):
        cursor = conn.execute(
            "UPDATE deliveries SET next_attempt_at = :now"
            " WHERE rowid IN (SELECT d.rowid FROM deliveries d INDEXED BY deliveries_pending"
            " CROSS JOIN outbox o ON o.id = d.outbox_id"
            " WHERE d.recipient IN (SELECT value FROM json_each(:recipients))"
            " AND d.status = 'pending' AND d.next_attempt_at > :now AND o.network = :network)",
            {"now": now_ms, "recipients": to_json(sorted(recipients)), "network": network},
        )
    return cursor.rowcount


def recover_inflight(conn: sqlite3.Connection, now_ms: int) -> int:
    """At startup, put every delivery left inflight by a crash back to pending, due now.

    Whether those attempts arrived is unknown; receivers dedupe by client_message_id.
    Returns how many deliveries were recovered.
    """
    with immediate(conn):
        outbox_ids = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT outbox_id FROM deliveries INDEXED BY deliveries_inflight"
                " WHERE status = 'inflight'"
            )
        ]
        cursor = conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?"
            " WHERE status = 'inflight'",
            (now_ms,),
        )
        bump_counts(conn, _moved("deliveries", {"inflight": cursor.rowcount}, "pending"))
        _refresh_statuses(conn, outbox_ids, now_ms)
    return cursor.rowcount


def list_rows(
    conn: sqlite3.Connection,
    *,
    status: str | None,
    network: str | None,
    limit: int,
    before: tuple[int, str] | None = None,
    max_bytes: int = MAX_PAGE_DATA_BYTES,
) -> tuple[list[OutboxRow], bool]:
    """Sends for the operator, newest first, optionally of one status and/or network, and
    after (older than) the row whose (created_at, id) is `before`; walks index
    outbox_by_status (one status) or outbox_recent (all) from the newest end, or from
    `before`, which need not exist any more (retention may have deleted it). At most `limit`
    rows and, past the first, `max_bytes` of their listed text (`_listed_bytes`), read one
    at a time, so a page of large rows is cut short with the rest unread; also returns
    whether the page was cut (by either bound: older rows may follow)."""
    if status is not None:
        _check_choice("status", status, ROW_STATUSES)
    index, where = (
        ("outbox_recent", "1") if status is None else ("outbox_by_status", "status = :status")
    )
    if before is not None:  # the walk starts at `before`, not at the newest end
        where += " AND (created_at, id) < (:created_at, :id)"
    at, row_id = before or (None, None)
    limit = checked_limit(limit, MAX_PAGE)
    with contextlib.closing(
        conn.execute(
            f"SELECT {_ROW_READ}, length(CAST(message AS BLOB))"
            " + coalesce(length(CAST(meta_json AS BLOB)), 0)"
            f" FROM outbox INDEXED BY {index}"
            f" WHERE {where} AND (:network IS NULL OR network = :network)"
            " ORDER BY created_at DESC, id DESC LIMIT :limit",
            {"status": status, "network": network, "created_at": at, "id": row_id, "limit": limit},
        )
    ) as rows:  # read one at a time: the rows past the byte bound stay unread
        found, cut = within_page_bytes(_listed(conn, rows), max_bytes)
    return found, cut or len(found) == limit


def _listed(
    conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]
) -> Iterator[tuple[OutboxRow, int]]:
    """Each listed row with its size: its text and meta (the query's last column) and what
    its deliveries add (`_listed_bytes`)."""
    for row in rows:
        listed = _outbox_row(conn, row)
        yield listed, row[-1] + _listed_bytes(listed)


def _listed_bytes(row: OutboxRow) -> int:
    """What a row's deliveries add to a listing, about: their recipients and errors, and
    LISTED_DELIVERY_BYTES for the rest of each (its text and meta are counted apart)."""
    return sum(
        len(d.recipient) + len(d.last_error or "") + LISTED_DELIVERY_BYTES for d in row.deliveries
    )


def requeue(
    conn: sqlite3.Connection,
    row_id: str,
    *,
    new_client_message_id: str | None,
    now_ms: int,
    evicted: Collection[str] = frozenset(),
) -> OutboxRow:
    """Send a dead row again as a new row with the same routing and content.

    The new row goes to the recipients whose delivery died, but those in `evicted` (devices
    evicted from the row's network, which it can never reach; a conflict when that leaves
    nobody), under a fresh (or the given) client_message_id for the lookup table, and out
    under the old row's origin key: a recipient that stored an attempt whose ack was lost
    (which is how a delivered copy can die) dedupes it. The old row becomes aborted with
    superseded_by set. Returns the new row. Only a dead row: a pending or inflight delivery
    is still being tried, and ends done or dead on its own.
    """
    if new_client_message_id is not None:
        _check_client_message_id(new_client_message_id)
    with immediate(conn):
        old = load_row(conn, row_id)
        if old is None:
            raise _no_row(row_id)
        if old.status != "dead":
            raise SendError(
                "not_requeueable",
                f"outbox row {row_id} is {old.status}; only a dead row can be requeued"
                " (a pending or inflight delivery is still being tried and may already"
                " have reached its recipient)",
            )
        key = new_client_message_id or mint_client_message_id(now_ms)
        taken = _taken_keys(conn, [(old.network, key)]).get((old.network, key))
        if taken is not None:
            raise SendError("conflict", f"client_message_id {key!r} is already row {taken[0]}")
        dead = [d.recipient for d in old.deliveries if d.status == "dead"]
        recipients = [recipient for recipient in dead if recipient not in evicted]
        if not recipients:
            raise SendError("conflict", f"{min(dead)} was evicted from {old.network}")
        new_id = mint_client_message_id(now_ms)
        inserts = _Inserts()
        inserts.add(
            conn,
            _Checked(
                SendRequest(
                    network=old.network,
                    recipients=recipients,
                    destination_kind=old.destination_kind,
                    destination_ref=old.destination_ref,
                    message=old.message,
                    priority=old.priority,
                    meta=old.meta,
                    reply_to_id=old.reply_to_id,
                    client_message_id=key,
                    now_ms=now_ms,
                ),
                key,
                old.request_fingerprint,
                new_id,
                old.origin_client_message_id,
            ),
        )
        inserts.write(conn)
        conn.execute(
            "UPDATE outbox SET status = 'aborted', superseded_by = ?, updated_at = ? WHERE id = ?",
            (new_id, now_ms, row_id),
        )
        bump_counts(conn, _moved("outbox", {old.status: 1}, "aborted"))
        new = load_row(conn, new_id)
    assert new is not None  # inserted in this transaction
    return new


def abort(
    conn: sqlite3.Connection, row_id: str, *, now_ms: int
) -> tuple[OutboxRow, list[DeliveryKey]]:
    """Give up a send that is not finished: the row becomes aborted and its open (pending or
    inflight) deliveries dead with last_error 'aborted', so no claim takes them again (only a
    pending delivery is claimed) and nothing puts them back to pending. Returns the row and
    the deliveries it ended. An attempt in flight already cannot be called back: its late ack
    still makes that delivery done, the row stays aborted. `conflict` for a done or aborted
    row, `not_found` for no row."""
    with immediate(conn):
        old = load_row(conn, row_id)
        if old is None:
            raise _no_row(row_id)
        if old.status not in ABORTABLE:
            raise SendError(
                "conflict",
                f"outbox row {row_id} is {old.status}; only a {', '.join(ABORTABLE[:-1])}"
                f" or {ABORTABLE[-1]} row can be aborted",
            )
        conn.execute(
            "UPDATE outbox SET status = 'aborted', updated_at = ? WHERE id = ?", (now_ms, row_id)
        )
        bump_counts(conn, _moved("outbox", {old.status: 1}, "aborted"))
        rows = conn.execute(
            "SELECT rowid, outbox_id, recipient, status FROM deliveries"
            " WHERE outbox_id = ? AND status IN ('pending', 'inflight')",
            (row_id,),
        ).fetchall()
        ended = _kill(conn, rows, now_ms, last_error=ABORTED)  # the row stays aborted
        row = load_row(conn, row_id)
    assert row is not None  # read in this transaction
    return row, ended


def _no_row(row_id: str) -> SendError:
    """`not_found` for a row id, the id cut short: a client may send any string."""
    return SendError("not_found", f"no outbox row {row_id[:64]!r}")


def delete_sends(conn: sqlite3.Connection, outbox_ids: Sequence[str]) -> int:
    """Delete these sends and (the cascade) their deliveries, taking them off row_counts;
    returns how many sends went. Retention and a network's purge both delete so."""
    ids = to_json(list(outbox_ids))
    gone: collections.Counter[tuple[str, str]] = collections.Counter()
    for table, column in (("outbox", "id"), ("deliveries", "outbox_id")):
        for (status,) in conn.execute(  # by key, row by row: a GROUP BY would scan the table
            f"SELECT status FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))",
            (ids,),
        ):
            gone[table, status] -= 1
    deleted = conn.execute(
        "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (ids,)
    ).rowcount
    bump_counts(conn, gone)
    return deleted


def _decide(row_id: str, key: str, status: str, match: bool, prefix: str) -> AcceptOutcome:
    """The lookup table for a request whose client_message_id already has a row."""
    if match and status in UNSENT:
        return AcceptOutcome("accepted", row_id, key, status, None, prefix)
    if match and status == "done":
        return AcceptOutcome("duplicate", row_id, key, status, None, prefix)
    reason = f"{status}_fingerprint_{'match' if match else 'mismatch'}"
    return AcceptOutcome("conflict", row_id, key, status, reason, prefix)


@attrs.define
class _Inserts:
    """New sends of one transaction, written together: their rows, their deliveries and the
    row_counts they add, each in one statement."""

    rows: list[tuple[Any, ...]] = attrs.field(factory=list)
    deliveries: list[tuple[Any, ...]] = attrs.field(factory=list)
    counts: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    queued: dict[str, bool] = attrs.field(factory=dict)  # recipient → a pending one waits

    def add(
        self,
        conn: sqlite3.Connection,
        item: _Checked,
        room: dict[str, int] | None = None,
    ) -> list[str]:
        """Stage the row of a checked request and one delivery per recipient, due now:
        inflight for the recipients `room` claims (see `accept_many`), pending for the rest;
        those claimed."""
        request, row_id = item.request, item.row_id
        claimed = [
            recipient
            for recipient in request.recipients
            if room and room.get(recipient, 0) > 0 and not self._queued(conn, recipient)
        ]
        for recipient in claimed:
            assert room is not None
            room[recipient] -= 1
        now_ms = request.now_ms
        self.rows.append(
            (
                row_id,
                request.network,
                item.key,
                item.fingerprint,
                request.destination_kind,
                request.destination_ref,
                request.priority,
                request.message,
                to_json(request.meta),
                request.reply_to_id,
                "inflight" if claimed else "pending",
                now_ms,
                now_ms,
                item.origin,
            )
        )
        rank = PRIORITIES.index(request.priority)  # deliveries_queue orders each peer's queue
        taken = set(claimed)
        for recipient in request.recipients:
            status = "inflight" if recipient in taken else "pending"
            self.deliveries.append((row_id, recipient, status, now_ms, rank))
            if status == "pending":
                self.queued[recipient] = True  # a later send to it waits behind this one
        self.counts["outbox", "inflight" if claimed else "pending"] += 1
        self.counts["deliveries", "inflight"] += len(claimed)
        self.counts["deliveries", "pending"] += len(request.recipients) - len(claimed)
        return claimed

    def _queued(self, conn: sqlite3.Connection, recipient: str) -> bool:
        """Whether a delivery to `recipient` is pending (in any network), staged here or
        stored: one claimed at accept would overtake it, so such a send waits its turn."""
        if recipient not in self.queued:
            self.queued[recipient] = _queued(conn, recipient)
        return self.queued[recipient]

    def write(self, conn: sqlite3.Connection) -> None:
        """Insert what was staged."""
        conn.executemany(
            f"INSERT INTO outbox ({_ROW_COLUMNS}, origin_client_message_id) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
            self.rows,
        )
        conn.executemany(
            "INSERT INTO deliveries"
            " (outbox_id, recipient, status, attempts, next_attempt_at, rank)"
            " VALUES (?, ?, ?, 0, ?, ?)",
            self.deliveries,
        )
        bump_counts(conn, self.counts)


def _queued(conn: sqlite3.Connection, recipient: str) -> bool:
    """Whether a delivery to `recipient` is pending (in any network): one claimed at accept
    would overtake it, so such a send waits its turn in the queue instead."""
    return (
        conn.execute(
            "SELECT 1 FROM deliveries INDEXED BY deliveries_queue"
            " WHERE recipient = ? AND status = 'pending' LIMIT 1",
            (recipient,),
        ).fetchone()
        is not None
    )


def _refresh_status(
    conn: sqlite3.Connection, outbox_id: str, now_ms: int, *, last_error: str | None = None
) -> None:
    """Store the row status derived from its deliveries (an aborted row stays aborted)."""
    _refresh_statuses(conn, [outbox_id], now_ms, last_error=last_error)


def _refresh_statuses(
    conn: sqlite3.Connection,
    outbox_ids: Collection[str],
    now_ms: int,
    *,
    last_error: str | None = None,
) -> None:
    """`_refresh_status` for several rows: one read of their deliveries, one update each."""
    statuses: dict[str, list[str]] = {outbox_id: [] for outbox_id in outbox_ids}
    if not statuses:
        return
    wanted = to_json(list(statuses))
    for outbox_id, status in conn.execute(
        "SELECT outbox_id, status FROM deliveries"
        " WHERE outbox_id IN (SELECT value FROM json_each(?))",
        (wanted,),
    ):
        statuses[outbox_id].append(status)
    stored = dict(
        conn.execute(
            "SELECT id, status FROM outbox WHERE id IN (SELECT value FROM json_each(?))"
            " AND status != 'aborted'",
            (wanted,),
        )
    )
    derived = {outbox_id: derive_status(statuses[outbox_id]) for outbox_id in stored}
    conn.executemany(
        "UPDATE outbox SET status = ?, updated_at = ?, last_error = coalesce(?, last_error)"
        " WHERE id = ?",
        [(status, now_ms, last_error, outbox_id) for outbox_id, status in derived.items()],
    )
    changes: collections.Counter[tuple[str, str]] = collections.Counter()
    for outbox_id, status in derived.items():
        changes.update(_moved("outbox", {stored[outbox_id]: 1}, status))
    bump_counts(conn, changes)


def _moved(table: str, old: Mapping[str, int], new: str) -> collections.Counter[tuple[str, str]]:
    """The row_counts changes of `table`'s rows leaving the statuses `old` counts for `new`."""
    changes = collections.Counter({(table, status): -rows for status, rows in old.items()})
    changes[table, new] += sum(old.values())
    return changes


def load_row(conn: sqlite3.Connection, row_id: str) -> OutboxRow | None:
    """One send with its deliveries, or None when there is no such row."""
    row = conn.execute(f"SELECT {_ROW_READ} FROM outbox WHERE id = ?", (row_id,)).fetchone()
    return None if row is None else _outbox_row(conn, row)


def _outbox_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> OutboxRow:
    deliveries = conn.execute(
        "SELECT recipient, status, attempts, next_attempt_at, last_error FROM deliveries"
        " WHERE outbox_id = ? ORDER BY recipient",
        (row[0],),
    ).fetchall()
    return OutboxRow(
        id=row[0],
        network=row[1],
        client_message_id=row[2],
        request_fingerprint=row[3],
        destination_kind=row[4],
        destination_ref=row[5],
        priority=row[6],
        message=row[7],
        meta=from_json(row[8]),
        reply_to_id=row[9],
        status=row[10],
        created_at=row[11],
        updated_at=row[12],
        last_error=row[13],
        superseded_by=row[14],
        origin_client_message_id=row[15],
        deliveries=tuple(RecipientState(*delivery) for delivery in deliveries),
    )


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        allowed = ", ".join(choices)
        raise SendError("invalid_request", f"{field} must be one of {allowed}: {value!r}")


def _check_client_message_id(value: str) -> None:
    if not 0 < len(value) <= MAX_CLIENT_MESSAGE_ID_CHARS or not value.isprintable():
        raise SendError(
            "invalid_request",
            f"client_message_id must be 1..{MAX_CLIENT_MESSAGE_ID_CHARS} printable characters",
        )
