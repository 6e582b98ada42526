"""The peer frames of durable messages: `msg` carries one send to one recipient, `msg_ack`
answers it once the recipient's inbox holds it (or refuses it for good), and `msg_acks`
carries the acks of one stored batch to one sender in a single frame.

Whether a failed delivery is retried is decided by its error code alone (`is_permanent`).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import attrs

from meshactors.store.outbox import MAX_CLIENT_MESSAGE_ID_CHARS, PRIORITIES
from meshactors.wire.peer import Frame, register_frame

MAX_MESSAGE_BYTES = 128 * 1024  # one message's text as UTF-8 (a sealed frame holds 256 KiB)
MAX_META_BYTES = 16 * 1024  # one message's `meta` object as compact JSON
MAX_REF_CHARS = 64  # an outbox row id echoed in acks (a ULID has 26)
MAX_ACKS = 256  # acks in one msg_acks frame (at most ~40 KiB of JSON)
ACK_STATUSES = ("stored", "duplicate", "rejected")

# Delivery error codes (outbox `last_error`). Transient ones are retried with backoff.
ACK_TIMEOUT = "ack_timeout"  # no msg_ack in time: the peer or its store may be slow
RECEIVER_BUSY = "receiver_busy"  # the recipient's queue was full and it said so
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
    reply_to_id: str | None
    sent_at: int  # the sender's accept time, ms since the epoch


@register_frame("msg_ack", app=True)
@attrs.frozen
class MsgAck(Frame):
    """The recipient has the message (`stored` now or a `duplicate`), or refused it
    (`rejected`, with an error code)."""

    ref: str = attrs.field(validator=_check_len(MAX_REF_CHARS))
    status: str = attrs.field(validator=_check_status)
    error: str | None = None


def _check_acks(_instance: object, _attribute: attrs.Attribute[list[MsgAck]], value: Sized) -> None:
    if not 0 < len(value) <= MAX_ACKS:
        raise ValueError(f"acks must hold 1-{MAX_ACKS} acks")


@register_frame("msg_acks", app=True, feature="msg_acks")
@attrs.frozen
class MsgAcks(Frame):
    """Several `msg_ack`s to one sender in one frame (one seal), as one stored batch answers
    them. A peer without the `msg_acks` feature gets one `msg_ack` each."""

    acks: list[MsgAck] = attrs.field(validator=_check_acks)

    def downgrade(self) -> list[Frame]:
        return list(self.acks)
