"""Peer frames of binary streams: opening, accepting, credit, end and reset as JSON frames, and
`stream_data` as the one binary frame, so bulk bytes cross the link without base64.

`id` is the opener's id of the stream (32 hex digits); `opener` says which side sent a frame,
so each daemon keys a stream by (peer, id, side) and a peer cannot reach another's streams.
"""

from __future__ import annotations

import struct

import attrs

from meshactors.network.app_frames import WireError
from meshactors.network.payload import MAX_METHOD_OR_CHANNEL_CHARS
from meshactors.wire.peer import BinaryFrame, Frame, register_binary_frame, register_frame

STREAM_ID_BYTES = 16  # a stream id: 128 random bits, 32 hex digits on the wire
STREAM_WINDOW_BYTES = 2 * 1024 * 1024  # credit per direction: what may be in flight unread
_DATA_HEAD = struct.Struct(">BQ16s")  # flags, seq, id
_FROM_OPENER = 1  # flags bit: the opener sent this frame


def _stream_id(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) != 2 * STREAM_ID_BYTES or value.strip("0123456789abcdef"):
        raise ValueError(f"a stream id is {2 * STREAM_ID_BYTES} lowercase hex digits")


def _method(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not 0 < len(value) <= MAX_METHOD_OR_CHANNEL_CHARS:
        raise ValueError(f"method must be 1-{MAX_METHOD_OR_CHANNEL_CHARS} characters")


def _credit(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value <= STREAM_WINDOW_BYTES:
        raise ValueError(f"credit must be 1-{STREAM_WINDOW_BYTES} bytes")


def _seq(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value < 2**63:
        raise ValueError("seq must be 0 to 2^63 - 1")


@register_frame("stream_open", app=True)
@attrs.frozen
class StreamOpen(Frame):
    """Open a binary stream to whoever serves `method` with a binary claim; the opener waits
    `timeout_ms` for the accept."""

    id: str = attrs.field(validator=_stream_id)
    method: str = attrs.field(validator=_method)
    timeout_ms: int = attrs.field(validator=_seq)


@register_frame("stream_ready", app=True)
@attrs.frozen
class StreamReady(Frame):
    """The serving program accepted the stream: bytes may flow both ways."""

    id: str = attrs.field(validator=_stream_id)


@register_frame("stream_credit", app=True)
@attrs.frozen
class StreamCredit(Frame):
    """The sender of this frame consumed `bytes` of the other side's credit."""

    id: str = attrs.field(validator=_stream_id)
    opener: bool
    bytes: int = attrs.field(validator=_credit)


@register_frame("stream_end", app=True)
@attrs.frozen
class StreamEnd(Frame):
    """No more data in the sender's direction; `seq` is its last data frame's (0: none)."""

    id: str = attrs.field(validator=_stream_id)
    opener: bool
    seq: int = attrs.field(validator=_seq)


@register_frame("stream_reset", app=True)
@attrs.frozen
class StreamReset(Frame):
    """The stream is over both ways, for `error`."""

    id: str = attrs.field(validator=_stream_id)
    opener: bool
    error: WireError


@register_binary_frame("stream_data", 1)
@attrs.frozen
class StreamData(BinaryFrame):
    """The next bytes of one direction: `flags | seq | id | data`, not JSON."""

    id: str = attrs.field(validator=_stream_id)
    opener: bool
    seq: int = attrs.field(validator=_seq)
    data: bytes

    def body(self) -> bytes:
        flags = _FROM_OPENER if self.opener else 0
        return _DATA_HEAD.pack(flags, self.seq, bytes.fromhex(self.id)) + self.data

    @classmethod
    def from_body(cls, body: bytes) -> StreamData:
        if len(body) <= _DATA_HEAD.size:
            raise ValueError("a data frame carries a head and at least one byte")
        flags, seq, raw_id = _DATA_HEAD.unpack_from(body)
        if flags & ~_FROM_OPENER:
            raise ValueError(f"unknown flags {flags:#x}")
        return cls(raw_id.hex(), bool(flags), seq, body[_DATA_HEAD.size :])


def wire_error(code: str, message: str) -> WireError:
    """An error for a stream_reset (the message cut to what a WireError carries)."""
    return WireError(code, (message or code)[:4096])
