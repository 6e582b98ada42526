"""RFC 6455 frames: encode one, and parse them incrementally from received bytes.

Parsing checks the header before the payload arrives, so an oversized frame is refused
without buffering it.
"""

from __future__ import annotations

import enum
import struct

import attrs

from meshactors.entropy import random_bytes

MAX_CONTROL_PAYLOAD = 125  # bytes: RFC 6455 §5.5
COMPACT_AFTER = 64 * 1024  # consumed bytes kept at the buffer's front before it is compacted


class Opcode(enum.IntEnum):
    """The frame types this implementation speaks (no extensions)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes this layer sends on its own account."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005  # reported, never sent: the close frame carried no code
    ABNORMAL = 1006  # reported, never sent: the connection ended without a close frame
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009


_DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
_CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_OPCODES = {opcode.value: opcode for opcode in Opcode}  # a dict lookup: Opcode(n) costs ~0.5 µs


class ProtocolViolation(Exception):
    """The peer broke the framing rules; `code` is the close code to answer with."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class Frame:
    """One unmasked frame."""

    opcode: Opcode
    fin: bool
    payload: bytes


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR `data` with the repeated 4-byte `key` (masking and unmasking are the same)."""
    length = len(data)
    if not length:
        return b""
    repeated = (key * (length // 4 + 1))[:length]
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
    return mixed.to_bytes(length, "little")


def encode_frame(opcode: Opcode, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; a client masks with a fresh random key, a server never masks."""
    length, first, mask_bit = len(payload), 0x80 | opcode, 0x80 if mask else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return head + payload
    key = random_bytes(4)
    return head + key + apply_mask(payload, key)


@attrs.define
class FrameParser:
    """Turns received bytes into frames, refusing bad headers and frames over `max_payload`."""

    expect_masked: bool  # a server requires masked frames, a client unmasked ones
    max_payload: int
    _buffer: bytearray = attrs.field(factory=bytearray)
    _start: int = 0  # where the unparsed bytes begin

    def feed(self, data: bytes | bytearray) -> None:
        """Add received bytes."""
        if self._start > COMPACT_AFTER:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive; raises ProtocolViolation."""
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < 2:
            return None
        first, second = buffer[start], buffer[start + 1]
        opcode_value, fin = first & 0x0F, bool(first & 0x80)
        masked, length = second & 0x80, second & 0x7F
        if first & 0x70:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        opcode = _OPCODES.get(opcode_value)
        if opcode is None:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode_value}")
        if bool(masked) != self.expect_masked:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "wrong masking for this direction")
        header = 2
        if length == 126:
            if available < 4:
                return None
            (length,) = struct.unpack_from("!H", buffer, start + 2)
            header = 4
        elif length == 127:
            if available < 10:
                return None
            (length,) = struct.unpack_from("!Q", buffer, start + 2)
            header = 10
            if length >> 63:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "64-bit length with the top bit")
        if opcode in _CONTROL_OPCODES and (not fin or length > MAX_CONTROL_PAYLOAD):
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "fragmented or long control frame")
        if length > self.max_payload:
            raise ProtocolViolation(
                CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds {self.max_payload}"
            )
        key_at = start + header
        if masked:
            header += 4
        end = start + header + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[start + header : end])
        if masked:
            payload = apply_mask(payload, bytes(buffer[key_at : key_at + 4]))
        self._start = end
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        return Frame(opcode, fin, payload)


def is_data(opcode: Opcode) -> bool:
    """Whether the frame carries (part of) a message rather than control."""
    return opcode in _DATA_OPCODES
