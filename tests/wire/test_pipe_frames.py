"""The framing of a binary stream on the socket, and the binary `stream_data` peer frame."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshactors.network.app_frames import WireError
from meshactors.network.stream_frames import StreamData, StreamReset
from meshactors.wire.peer import BadPeerFrame, decode_frame, encode_frame
from meshactors.wire.pipe_frames import (
    END,
    ERROR_BIT,
    MAX_ERROR_FRAME_BYTES,
    MAX_STREAM_FRAME_BYTES,
    FrameParser,
    Item,
    Reset,
    encode,
)

ID = "0123456789abcdef" * 2

items = st.lists(st.binary(min_size=1, max_size=300), max_size=20).map(
    lambda chunks: [*chunks, END]
)


@given(items, st.data())
def test_any_cut_of_the_bytes_parses_to_the_same_items(
    sent: list[Item], data: st.DataObject
) -> None:
    wire = b"".join(part for item in sent for part in encode(item))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    parser = FrameParser()
    got: list[Item] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got.extend(parser.feed(wire[start:end]))
    assert got == sent
    assert list(parser.feed(b"".join(encode(b"next")))) == [b"next"]  # nothing left over


@given(items, st.data(), st.integers(1, 400))
def test_with_pieces_data_comes_as_it_is_read_in_pieces_with_the_ends_in_place(
    sent: list[Item], data: st.DataObject, piece: int
) -> None:
    """A parser with `piece` holds no data frame whole: each read's data comes out at once,
    cut into pieces of at most `piece` bytes; the bytes between two ends are the same."""
    sent = [*sent, b"after the end", Reset("cancelled", "bye")]
    wire, data_at = b"", []  # the wire bytes, and where each data byte of it is
    for item in sent:
        head, *body = encode(item)
        if isinstance(item, bytes):
            data_at.extend(range(len(wire) + len(head), len(wire) + len(head) + len(item)))
        wire += head + b"".join(body)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    parser = FrameParser(piece)
    got: list[Item] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got.extend(parser.feed(wire[start:end]))
        read = bytes(wire[at] for at in data_at if at < end)
        assert b"".join(item for item in got if isinstance(item, bytes)) == read
    assert all(len(item) <= piece for item in got if isinstance(item, bytes))
    assert _joined(got) == _joined(sent)


def _joined(items: list[Item]) -> list[Item]:
    """`items` with the data between two other items joined into one."""
    joined: list[Item] = []
    for item in items:
        if isinstance(item, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += item
        else:
            joined.append(item)
    return joined


def test_an_error_frame_carries_code_and_message_and_stops_parsing() -> None:
    wire = b"".join(encode(Reset("peer_not_active", "gone"))) + b"".join(encode(b"after"))
    assert list(FrameParser().feed(wire)) == [Reset("peer_not_active", "gone")]


@pytest.mark.parametrize("body", [b"bad", b"[" * MAX_ERROR_FRAME_BYTES], ids=["bad", "deep"])
def test_a_program_error_frame_that_is_not_json_is_its_message(body: bytes) -> None:
    """Nested deeper than the parser goes (RecursionError) is as much not JSON as text is."""
    wire = struct.pack(">I", ERROR_BIT | len(body)) + body
    assert list(FrameParser().feed(wire)) == [Reset("remote_error", body.decode())]


@pytest.mark.parametrize(
    "word", [MAX_STREAM_FRAME_BYTES + 1, ERROR_BIT | (MAX_ERROR_FRAME_BYTES + 1), 0xFFFFFFFF]
)
def test_a_length_over_the_limit_resets_before_any_byte_is_buffered(word: int) -> None:
    parser = FrameParser()
    (reset,) = parser.feed(struct.pack(">I", word) + b"x" * 10)
    assert isinstance(reset, Reset) and reset.code == "frame_too_large"
    assert list(parser.feed(b"\0\0\0\1y")) == []  # nothing after it is read


def test_the_error_frame_written_to_a_program_is_json() -> None:
    head, body = encode(Reset("cancelled", "closed"))
    assert struct.unpack(">I", head)[0] == ERROR_BIT | len(body)
    assert json.loads(body) == {"code": "cancelled", "message": "closed"}


long_texts = st.builds(lambda part, times: part * times, st.text(min_size=1), st.integers(1, 1500))


@given(st.sampled_from(["remote_error", "peer_not_active"]), st.text(min_size=1) | long_texts)
def test_an_error_message_of_any_text_arrives_as_json_within_the_limit(
    code: str, message: str
) -> None:
    """A longer message loses its middle, not its end: JSON cut at the limit did not parse."""
    head, body = encode(Reset(code, message))
    assert len(body) <= MAX_ERROR_FRAME_BYTES
    (got,) = FrameParser().feed(head + body)
    assert isinstance(got, Reset) and got.code == code
    if got.message != message:
        kept = len(got.message) - 1  # all but the ellipsis
        start = (kept + 1) // 2
        assert got.message == f"{message[:start]}…{message[len(message) - (kept - start) :]}"
        assert kept >= MAX_ERROR_FRAME_BYTES // 16  # an escaped character takes at most 12 bytes


@given(st.binary(min_size=1, max_size=2000), st.integers(0, 2**63 - 1), st.booleans())
def test_stream_data_is_a_binary_frame_that_round_trips(
    data: bytes, seq: int, opener: bool
) -> None:
    frame = StreamData(ID, opener, seq, data)
    encoded = encode_frame(frame)
    assert encoded[:2] == b"\0\1" and encoded.endswith(data)  # not JSON, no base64
    assert decode_frame(encoded) == frame


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\0", "unknown_frame"),
        (b"\0\x7f" + b"x" * 30, "unknown_frame"),
        (b"\0\1" + b"\0" * 25, "malformed"),  # a head and no byte
        (b"\0\1\2" + b"\0" * 30, "malformed"),  # unknown flags
    ],
)
def test_bad_binary_frames_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(BadPeerFrame) as bad:
        decode_frame(data)
    assert bad.value.reason == reason


def test_the_other_stream_frames_are_json() -> None:
    frame = StreamReset(ID, True, WireError("cancelled", "bye"))
    assert json.loads(encode_frame(frame))["t"] == "stream_reset"
    assert decode_frame(encode_frame(frame)) == frame
