"""Batches of sealed-frame envelopes: the BINARY WebSocket messages between daemon and broker.

A batch is a concatenation of records `address (32 raw public-key bytes) + u32 big-endian
length + bytes`. Daemon-to-broker the address is the destination (`to`); broker-to-daemon
it is the sender (`from`). Several records per message is the throughput lever.
"""

import struct
from collections.abc import Sequence
from typing import Final

from meshactors.wire.device_id import PUBLIC_KEY_BYTES

_LENGTH: Final = struct.Struct(">I")
RECORD_HEADER_BYTES: Final = PUBLIC_KEY_BYTES + _LENGTH.size  # 36: address + u32 length
MAX_RECORD_BYTES: Final = 2**32 - 1  # what a u32 length can declare


class MalformedBatch(ValueError):
    """A batch (or records to encode) that does not follow the record layout."""

    code: Final = "malformed_batch"


def encode_batch(records: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Concatenate (address, payload) records into one batch message."""
    if not records:
        raise MalformedBatch("a batch holds at least one record")
    parts: list[bytes] = []
    for address, payload in records:
        if len(address) != PUBLIC_KEY_BYTES:
            raise MalformedBatch(f"address must be {PUBLIC_KEY_BYTES} bytes, got {len(address)}")
        if len(payload) > MAX_RECORD_BYTES:
            raise MalformedBatch(f"record of {len(payload)} bytes exceeds the u32 length")
        parts += (address, _LENGTH.pack(len(payload)), payload)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a batch message into (address, payload) records; strict about every byte."""
    if not data:
        raise MalformedBatch("empty batch")
    view = memoryview(data)
    records: list[tuple[bytes, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < RECORD_HEADER_BYTES:
            raise MalformedBatch(f"truncated record header at byte {offset}")
        (length,) = _LENGTH.unpack_from(data, offset + PUBLIC_KEY_BYTES)
        start = offset + RECORD_HEADER_BYTES
        if length > len(data) - start:
            raise MalformedBatch(
                f"record at byte {offset} declares {length} bytes, {len(data) - start} remain"
            )
        records.append(
            (bytes(view[offset : offset + PUBLIC_KEY_BYTES]), bytes(view[start : start + length]))
        )
        offset = start + length
    return records
