"""RPC and channel peer frames: they round-trip, and bad ones are refused as malformed."""

from __future__ import annotations

import json

import pytest

from meshactors.network.app_frames import (
    Chan,
    ChanAck,
    ChanRun,
    RpcCall,
    RpcCancel,
    RpcChunk,
    RpcCredit,
    RpcEnd,
    RpcResult,
    WireError,
)
from meshactors.wire.peer import (
    FEATURES,
    MAX_PEER_FRAME_BYTES,
    BadPeerFrame,
    Frame,
    decode_frame,
    encode_for,
    encode_frame,
)

FRAMES: list[Frame] = [
    RpcCall("id1", "echo", {"x": [1, None]}, False, False, 30_000),
    RpcResult("id1", "QUJD", True),
    RpcResult("id1", error=WireError("no_handler", "nobody")),
    RpcChunk("id1", 7),
    RpcEnd("id1", WireError("remote_error", "boom")),
    RpcCancel("id1", "timeout"),
    RpcCredit("id1", 128),
    Chan("news", "hi", retain=True),
    Chan("news", None, ack="a1"),
    ChanAck("a1", 2),
    ChanRun("news", [1, {"x": None}, "three"], retain=True),
    ChanRun("news", ["QUJD", "AA=="], binary=True),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.tag)
def test_frames_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@pytest.mark.parametrize(
    "fields",
    [
        {"t": "chan", "channel": "c", "payload": 1, "binary": True},
        {"t": "chan", "channel": "", "payload": 1},
        {"t": "rpc_credit", "id": "x", "n": 0},
        {"t": "rpc_chunk", "id": "", "payload": 1},
        {"t": "rpc_call", "id": "x", "method": "m", "payload": 1, "binary": False},
        {"t": "chan_run", "channel": "c", "payloads": []},
        {"t": "chan_run", "channel": "c", "payloads": ["QQ==", 1], "binary": True},
        {"t": "chan_run", "channel": "c", "payloads": "abc"},
    ],
)
def test_bad_frames_are_malformed(fields: dict[str, object]) -> None:
    with pytest.raises(BadPeerFrame) as bad:
        decode_frame(json.dumps(fields).encode())
    assert bad.value.reason == "malformed"


def test_an_unknown_remote_error_code_reads_as_remote_error() -> None:
    assert WireError("weird", "x").known_code == "remote_error"
    assert WireError("handler_gone", "x").known_code == "handler_gone"


def test_a_run_reads_as_one_chan_per_message_for_a_peer_without_the_feature() -> None:
    run = ChanRun("news", ["QUJD", "AA=="], binary=True, retain=True)
    assert run.feature == "chan_run"
    assert run.downgrade() == [
        Chan("news", "QUJD", binary=True, retain=True),
        Chan("news", "AA==", binary=True, retain=True),
    ]
    assert Chan.feature is None  # frames of the first 1.x go to every peer as they are


def test_a_run_too_large_for_one_frame_is_encoded_as_halves_in_order() -> None:
    values = [[n, "z" * (MAX_PEER_FRAME_BYTES // 3)] for n in range(7)]
    parts = encode_for(ChanRun("big", values), FEATURES)
    assert all(len(part) <= MAX_PEER_FRAME_BYTES for part in parts)
    decoded = [decode_frame(part) for part in parts]
    assert [len(frame.payloads) for frame in decoded if isinstance(frame, ChanRun)] == [1, 2, 2, 2]
    assert [value for frame in decoded for value in frame.payloads] == values
    alone = ChanRun("big", ["z" * MAX_PEER_FRAME_BYTES])  # one message too large to split
    assert encode_for(alone, FEATURES) == [encode_frame(Chan("big", "z" * MAX_PEER_FRAME_BYTES))]
    assert encode_for(ChanRun("c", [1, 2]), []) == [encode_frame(Chan("c", n)) for n in (1, 2)]
