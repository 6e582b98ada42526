"""RFC 6455 framing: encode/parse round trips, incremental parsing, and every refusal."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshactors.websocket.frames import (
    COMPACT_AFTER,
    Frame,
    FrameParser,
    Opcode,
    ProtocolViolation,
    apply_mask,
    encode_frame,
)
from tests.websocket.support import raw_frame

BIG = 1 << 20  # max_payload for parsers that should accept every frame here


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize(
    ("length", "header"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)]
)
def test_round_trip_at_length_boundaries(mask: bool, length: int, header: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    data = encode_frame(Opcode.BINARY, payload, mask=mask)
    assert len(data) == header + (4 if mask else 0) + length
    parser = FrameParser(expect_masked=mask, max_payload=BIG)
    parser.feed(data)
    assert parser.next_frame() == Frame(Opcode.BINARY, True, payload)
    assert parser.next_frame() is None


def test_mask_is_its_own_inverse() -> None:
    key, data = b"\x01\x02\x03\x04", b"hello, masked world"
    assert apply_mask(data, key) != data
    assert apply_mask(apply_mask(data, key), key) == data


@pytest.mark.parametrize("mask", [False, True])
def test_parse_fed_one_byte_at_a_time(mask: bool) -> None:
    data = encode_frame(Opcode.TEXT, b"x" * 300, mask=mask)
    parser = FrameParser(expect_masked=mask, max_payload=BIG)
    for byte in data[:-1]:
        parser.feed(bytes([byte]))
        assert parser.next_frame() is None
    parser.feed(data[-1:])
    assert parser.next_frame() == Frame(Opcode.TEXT, True, b"x" * 300)


def test_several_frames_in_one_feed() -> None:
    sent = [(Opcode.TEXT, b"one"), (Opcode.PING, b"p"), (Opcode.BINARY, b"\x00" * 200)]
    parser = FrameParser(expect_masked=True, max_payload=BIG)
    parser.feed(b"".join(encode_frame(op, payload, mask=True) for op, payload in sent))
    received = [parser.next_frame() for _ in sent]
    assert received == [Frame(op, True, payload) for op, payload in sent]
    assert parser.next_frame() is None


def test_buffer_is_compacted_after_enough_is_consumed() -> None:
    frame = encode_frame(Opcode.BINARY, b"z" * 1000, mask=False)
    count = COMPACT_AFTER // len(frame) + 2
    parser = FrameParser(expect_masked=False, max_payload=BIG)
    parser.feed(frame * count + frame[:10])  # a partial frame keeps the buffer from clearing
    for _ in range(count):
        assert parser.next_frame() == Frame(Opcode.BINARY, True, b"z" * 1000)
    parser.feed(frame[10:])
    assert len(parser._buffer) == len(frame)  # the consumed front was dropped
    assert parser.next_frame() == Frame(Opcode.BINARY, True, b"z" * 1000)
    assert parser.next_frame() is None


def _violation(data: bytes, *, expect_masked: bool = True, max_payload: int = BIG) -> int:
    parser = FrameParser(expect_masked=expect_masked, max_payload=max_payload)
    parser.feed(data)
    with pytest.raises(ProtocolViolation) as raised:
        parser.next_frame()
    return raised.value.code


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_reserved_bits_are_refused(rsv: int) -> None:
    assert _violation(raw_frame(Opcode.BINARY, b"x", mask=True, rsv=rsv)) == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcodes_are_refused(opcode: int) -> None:
    assert _violation(raw_frame(opcode, b"", mask=True)) == 1002


@pytest.mark.parametrize("expect_masked", [False, True])
def test_wrong_masking_for_the_direction_is_refused(expect_masked: bool) -> None:
    data = encode_frame(Opcode.TEXT, b"hi", mask=not expect_masked)
    assert _violation(data, expect_masked=expect_masked) == 1002


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_over_125_bytes_is_refused(opcode: Opcode) -> None:
    assert _violation(encode_frame(opcode, b"x" * 126, mask=True)) == 1002


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_fragmented_control_frame_is_refused(opcode: Opcode) -> None:
    assert _violation(raw_frame(opcode, b"x", mask=True, fin=False)) == 1002


@pytest.mark.parametrize("length", [101, 65536, 1 << 40])
def test_oversized_frame_is_refused_from_its_header_alone(length: int) -> None:
    if length < 126:
        header = bytes((0x82, 0x80 | length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x82, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x82, 0x80 | 127, length)
    assert _violation(header, max_payload=100) == 1009


def test_64_bit_length_with_the_top_bit_is_a_protocol_error() -> None:
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 63)
    assert _violation(header) == 1002


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    expect_masked=st.booleans(),
)
def test_arbitrary_bytes_only_ever_raise_protocol_violation(
    data: bytes, cuts: list[int], expect_masked: bool
) -> None:
    parser = FrameParser(expect_masked=expect_masked, max_payload=200)
    bounds = [0, *sorted(cut for cut in cuts if cut < len(data)), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            parser.feed(data[start:end])
            while (frame := parser.next_frame()) is not None:
                assert len(frame.payload) <= 200
    except ProtocolViolation as violation:
        assert violation.code in (1002, 1009)
