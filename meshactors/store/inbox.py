"""The inbox: messages from peers, stored once per sender's client_message_id, paged by cursor."""

import contextlib
import sqlite3
from typing import Any

import attrs

from meshactors.store.db import checked_limit, from_json, immediate, to_json
from meshactors.wire.ipc import MAX_PAGE, MAX_PAGE_DATA_BYTES, within_page_bytes

_COLUMNS = (
    "seq, network, sender, client_message_id, message, meta_json, priority, reply_to_id,"
    " sent_at, received_at"
)


@attrs.frozen
class InboxMessage:
    """A received message; `seq` is its place in the inbox and the paging cursor."""

    seq: int
    network: str
    sender: str
    client_message_id: str
    message: str
    meta: dict[str, Any] | None
    priority: str
    reply_to_id: str | None
    sent_at: int  # the sender's clock
    received_at: int  # ours


def store_message(
    conn: sqlite3.Connection,
    *,
    network: str,
    sender: str,
    client_message_id: str,
    message: str,
    meta: dict[str, Any] | None,
    priority: str,
    reply_to_id: str | None,
    sent_at: int,
    now_ms: int,
) -> tuple[InboxMessage, bool]:
    """Store a received message unless (network, sender, client_message_id) is already here.

    Returns the stored row and True, or for a redelivery the row stored first (its content
    wins) and False. Only a redelivery reads its row back: a new one is what was written.
    """
    with immediate(conn):
        inserted = conn.execute(
            f"INSERT INTO inbox ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (network, sender, client_message_id) DO NOTHING RETURNING seq",
            (
                network,
                sender,
                client_message_id,
                message,
                to_json(meta),
                priority,
                reply_to_id,
                sent_at,
                now_ms,
            ),
        ).fetchone()
        if inserted is None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM inbox"
                " WHERE network = ? AND sender = ? AND client_message_id = ?",
                (network, sender, client_message_id),
            ).fetchone()
            return _message(row), False
    stored = InboxMessage(
        seq=inserted[0],
        network=network,
        sender=sender,
        client_message_id=client_message_id,
        message=message,
        meta=meta,
        priority=priority,
        reply_to_id=reply_to_id,
        sent_at=sent_at,
        received_at=now_ms,
    )
    return stored, True


def page(
    conn: sqlite3.Connection,
    *,
    network: str | None = None,
    sender: str | None = None,
    since_ms: int | None = None,
    limit: int,
    cursor: int | None,
    max_bytes: int = MAX_PAGE_DATA_BYTES,
) -> tuple[list[InboxMessage], int | None, bool]:
    """One page of the inbox, oldest first (by seq), after `cursor` (None: from the start).

    Filters are optional; `since_ms` keeps messages received at or after it (our clock).
    At most `limit` (capped at MAX_PAGE) messages and, past the first, `max_bytes` of their
    text and meta, read one at a time, so a page of large messages is cut short with the
    rest unread. Returns the messages, the cursor for the next page and whether the page was
    cut (by either bound: ask again at once). The cursor is the last seq returned when the
    page was cut, else the newest seq there is (the scan passed every row up to it), so
    polling with it never skips or repeats, and a filtered poll that matches nothing does
    not walk the same rows again.
    """
    limit = checked_limit(limit, MAX_PAGE)
    with contextlib.closing(
        conn.execute(
            f"SELECT {_COLUMNS}, length(CAST(message AS BLOB))"
            " + coalesce(length(CAST(meta_json AS BLOB)), 0)"
            " FROM inbox WHERE seq > :cursor"
            " AND (:network IS NULL OR network = :network)"
            " AND (:sender IS NULL OR sender = :sender)"
            " AND (:since IS NULL OR received_at >= :since)"
            " ORDER BY seq LIMIT :limit",
            {
                "cursor": 0 if cursor is None else cursor,
                "network": network,
                "sender": sender,
                "since": since_ms,
                "limit": limit,
            },
        )
    ) as rows:  # read one at a time: the rows past the byte bound stay unread
        messages, cut = within_page_bytes(((_message(row), row[-1]) for row in rows), max_bytes)
    if cut or len(messages) == limit:
        return messages, messages[-1].seq, True
    # Only the store's one connection writes, so nothing came in between the two reads.
    newest: int | None = conn.execute("SELECT max(seq) FROM inbox").fetchone()[0]
    return messages, max((seq for seq in (cursor, newest) if seq is not None), default=None), False


def _message(row: tuple[Any, ...]) -> InboxMessage:
    return InboxMessage(
        seq=row[0],
        network=row[1],
        sender=row[2],
        client_message_id=row[3],
        message=row[4],
        meta=from_json(row[5]),
        priority=row[6],
        reply_to_id=row[7],
        sent_at=row[8],
        received_at=row[9],
    )
