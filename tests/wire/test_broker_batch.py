"""Batch codec: round trips, and every malformed shape refused with MalformedBatch."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshactors.wire.broker import (
    RECORD_HEADER_BYTES,
    MalformedBatch,
    decode_batch,
    encode_batch,
)

ALICE = bytes(range(32))
BOB = bytes(range(32, 64))

records_strategy = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32), st.binary(max_size=300)), min_size=1, max_size=20
)


def test_layout_is_address_then_u32_big_endian_length_then_bytes() -> None:
    batch = encode_batch([(ALICE, b"hi"), (BOB, b"")])
    assert batch == ALICE + b"\x00\x00\x00\x02hi" + BOB + b"\x00\x00\x00\x00"
    assert len(encode_batch([(ALICE, b"")])) == RECORD_HEADER_BYTES == 36


@given(records_strategy)
def test_decode_inverts_encode(records: list[tuple[bytes, bytes]]) -> None:
    assert decode_batch(encode_batch(records)) == records


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(ALICE[:20], id="short-header"),
        pytest.param(ALICE + b"\x00\x00", id="short-length"),
        pytest.param(ALICE + struct.pack(">I", 5) + b"abcd", id="short-body"),
        pytest.param(ALICE + struct.pack(">I", 1) + b"a" + BOB[:3], id="trailing-garbage"),
        pytest.param(ALICE + struct.pack(">I", 2**32 - 1), id="huge-declared-length"),
    ],
)
def test_malformed_batches_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedBatch) as caught:
        decode_batch(data)
    assert caught.value.code == "malformed_batch"


def test_encode_refuses_empty_batches_and_bad_addresses() -> None:
    with pytest.raises(MalformedBatch):
        encode_batch([])
    with pytest.raises(MalformedBatch, match="address must be 32 bytes"):
        encode_batch([(ALICE[:31], b"x")])
