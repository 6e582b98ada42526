"""Fuzz peer-frame decoding: opened bytes become a frame or a BadPeerFrame with a stable reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshactors.wire.peer import (
    MAX_PEER_FRAME_BYTES,
    MAX_VERSION_PART,
    BadPeerFrame,
    Capabilities,
    Caps,
    Frame,
    IncompatiblePeer,
    Ping,
    decode_frame,
    encode_frame,
)
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import hostile_json, json_line, json_values, mutated

# The reasons docs/protocol.md ("Frames") documents for a frame that does not decode.
DOCUMENTED_REASONS = {"malformed", "too_large", "unknown_frame", "bad_value", "too_deep"}
GOOD_FRAMES = [
    encode_frame(Ping(token=7)),
    encode_frame(Caps(capabilities=Capabilities(tags=["a"], extra={"k": [1, None]}))),
    b'{"t":"approval","state":"approved"}',
    b'{"t":"bye","reason":"stopping"}',
    b'{"t":"msg_batch","msgs":[{"ref":"r1","client_message_id":"k1","message":"hi","meta":null,'
    b'"priority":"next","reply_to_id":null,"sent_at":1}]}',
]
TAGS = ["hello", "approval", "caps", "profile", "ping", "pong", "bye", "msg_batch", "nope"]

frame_bytes = (
    st.binary(max_size=300)
    | json_values.map(json_line)
    | st.dictionaries(st.text(max_size=12), json_values | hostile_json, max_size=4)
    .flatmap(lambda fields: st.sampled_from(TAGS).map(lambda tag: {**fields, "t": tag}))
    .map(json_line)
    | st.one_of(*(mutated(good) for good in GOOD_FRAMES))
)


@fuzz
@given(frame_bytes)
def test_decode_frame_reasons_are_documented(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except BadPeerFrame as bad:
        assert bad.reason in DOCUMENTED_REASONS
    except IncompatiblePeer:
        assert b"hello" in data
    else:
        assert isinstance(frame, Frame)
        assert decode_frame(encode_frame(frame)) == frame


version_parts = (
    json_values
    | hostile_json
    | st.text(min_size=100, max_size=5000)
    | st.sampled_from(["\x1b]0;pwned\x07\x1b[31mRED", "\u202e", "1\n2"])
)


@fuzz
@given(version_parts, version_parts)
def test_an_incompatible_reason_is_short_and_printable(major: object, minor: object) -> None:
    try:
        decode_frame(json_line({"t": "hello", "major": major, "minor": minor}))
    except IncompatiblePeer as skew:
        longest = IncompatiblePeer(MAX_VERSION_PART, MAX_VERSION_PART)
        assert len(str(skew)) <= len(str(longest))
        assert str(skew).isprintable()
    except BadPeerFrame:
        pass  # a value no frame may carry, or our own major with a malformed hello


def test_oversized_frame_is_too_large() -> None:
    try:
        decode_frame(b" " * (MAX_PEER_FRAME_BYTES + 1))
    except BadPeerFrame as bad:
        assert bad.reason == "too_large"
    else:
        raise AssertionError("an oversized frame decoded")
