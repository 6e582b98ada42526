"""The peer frames of durable messages: `msg` carries one send to one recipient, `msg_batch`
several of them in one frame (one seal), `msg_ack` answers one once the recipient's inbox
holds it (or refuses it for good), and `msg_acks` carries the acks of one stored batch to
one sender in a single frame.

Whether a failed delivery is retried is decided by its error code alone (`is_permanent`).
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import attrs

from meshactors.store.outbox import MAX_CLIENT_MESSAGE_ID_CHARS
from meshactors.wire.compact import json_size
from meshactors.wire.ipc import PRIORITIES
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH, BadJson, check_json
from meshactors.wire.peer import Frame, register_frame

MAX_MESSAGE_BYTES = 128 * 1024  # one message's text as escaped JSON (a peer frame holds 256 KiB)
MAX_META_BYTES = 16 * 1024  # one message's `meta` object as compact JSON
MAX_REF_CHARS = 64  # an outbox row id echoed in acks (a ULID has 26)
MAX_ACKS = 256  # acks in one msg_acks frame (at most ~40 KiB of JSON)
MAX_BATCH_MSGS = 256  # msgs in one msg_batch frame (a frame holds 256 KiB of JSON in all)
BATCH_BYTES = 64 * 1024  # message text and meta the sender packs into one msg_batch at most
# (characters: text beyond ASCII may encode larger; a batch over the frame size goes in halves)
BATCH_META_DEPTH = MAX_JSON_DEPTH - 3  # a batched meta's own nesting: the frame, `msgs` and the
# msg hold it, where a lone msg's meta may nest one level less than the frame's limit
ACK_STATUSES = ("stored", "duplicate", "rejected")

# Delivery error codes (outbox `last_error`). Transient ones are retried with backoff.
ACK_TIMEOUT = "ack_timeout"  # no msg_ack in time: the peer or its store may be slow
INVALID_MESSAGE = "invalid_message"  # the recipient refused the frame's content
PERMANENT_ERRORS = frozenset({INVALID_MESSAGE})  # never retried: the row goes dead at once


def is_permanent(error_code: str) -> bool:
    """Whether a failed delivery with this code can never succeed (so no retry)."""
    return error_code in PERMANENT_ERRORS


def _check_len(limit: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if not 0 < len(value) <= limit or not value.isprintable():
            raise ValueError(f"{attribute.name} must be 1-{limit} printable characters")

    return check


def _check_priority(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")


def _check_status(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ACK_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ACK_STATUSES)}")


@register_frame("msg", app=True)
@attrs.frozen
class Msg(Frame):
    """One durable message to the recipient; `ref` is the sender's outbox row, echoed back."""

    ref: str = attrs.field(validator=_check_len(MAX_REF_CHARS))
    client_message_id: str = attrs.field(validator=_check_len(MAX_CLIENT_MESSAGE_ID_CHARS))
    message: str
    meta: dict[str, Any] | None
    priority: str = attrs.field(validator=_check_priority)
    reply_to_id: str | None = attrs.field(
        validator=attrs.validators.optional(_check_len(MAX_CLIENT_MESSAGE_ID_CHARS))
    )
    sent_at: int  # the sender's accept time, ms since the epoch


@register_frame("msg_ack", app=True)
@attrs.frozen
class MsgAck(Frame):
    """The recipient has the message (`stored` now or a `duplicate`), or refused it
    (`rejected`, with an error code)."""

    ref: str = attrs.field(validator=_check_len(MAX_REF_CHARS))
    status: str = attrs.field(validator=_check_status)
    error: str | None = None


def _check_count(limit: int) -> Any:
    """A validator for a list that must hold 1 to `limit` items."""

    def check(_instance: object, attribute: attrs.Attribute[Sized], value: Sized) -> None:
        if not 0 < len(value) <= limit:
            raise ValueError(f"{attribute.name} must hold 1-{limit} items")

    return check


@register_frame("msg_acks", app=True, feature="msg_acks")
@attrs.frozen
class MsgAcks(Frame):
    """Several `msg_ack`s to one sender in one frame (one seal), as one stored batch answers
    them. A peer without the `msg_acks` feature gets one `msg_ack` each."""

    acks: list[MsgAck] = attrs.field(validator=_check_count(MAX_ACKS))

    def downgrade(self) -> list[Frame]:
        return list(self.acks)


@register_frame("msg_batch", app=True, feature="msg_batch")
@attrs.frozen
class MsgBatch(Frame):
    """Several `msg`s to one recipient in one frame (one seal, one record), as the outbox
    sends a claimed batch; each is acked as if it came alone. A peer without the
    `msg_batch` feature gets one `msg` each; a batch too large for a frame goes in halves."""

    msgs: list[Msg] = attrs.field(validator=_check_count(MAX_BATCH_MSGS))

    def downgrade(self) -> list[Frame]:
        return list(self.msgs)

    def split(self) -> list[Frame]:
        half = len(self.msgs) // 2
        if not half:
            return self.downgrade()
        return [MsgBatch(self.msgs[:half]), MsgBatch(self.msgs[half:])]


def batches(msgs: Sequence[Msg]) -> list[Frame]:
    """`msgs` packed in order into `msg_batch` frames of at most MAX_BATCH_MSGS messages and
    about BATCH_BYTES of text and meta each (a message larger than that goes alone). A
    message whose meta is nested too deep to go one level further down goes as a `msg` of
    its own, so a batch never fails a check its messages would pass alone."""
    packed: list[Frame] = []
    run: list[Msg] = []
    size = 0
    for msg in msgs:
        alone = msg.meta is not None and not _nests_in_batch(msg.meta)
        weight = len(msg.message) + (0 if msg.meta is None else json_size(msg.meta))
        if run and (alone or len(run) == MAX_BATCH_MSGS or size + weight > BATCH_BYTES):
            packed.append(MsgBatch(run))
            run, size = [], 0
        if alone:
            packed.append(msg)
            continue
        run.append(msg)
        size += weight
    if run:
        packed.append(MsgBatch(run))
    return packed


def _nests_in_batch(meta: dict[str, Any]) -> bool:
    """Whether `meta` still passes the peer frame's depth check inside a batch, two levels
    deeper than in a `msg` of its own."""
    try:
        check_json(meta, BATCH_META_DEPTH)
    except BadJson:
        return False
    return True
