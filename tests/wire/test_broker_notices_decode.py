"""Decoding what a broker sends is total: generated JSON-ish text and bytes either decode to a
message or raise the module's own error (which the link counts as malformed), never anything
else; and what the broker encodes decodes back to the same message, in the documented bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meshactors.wire.broker import (
    MAX_ROLE_CHARS,
    BrokerProtocolError,
    MalformedBatch,
    PresenceJoin,
    PresenceLeave,
    Undeliverable,
    Welcome,
    decode_batch,
    decode_notice,
    decode_welcome,
    encode_notice,
)
from meshactors.wire.device_id import device_id_from_public_key

DEVICE = device_id_from_public_key(bytes(SigningKey(b"d" * 32).verify_key))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["welcome", "presence", "undeliverable", "join", "leave", DEVICE])
)
json_ish = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "type",
        "event",
        "device_id",
        "role",
        "peers",
        "v",
        "max_message_bytes",
        "message_rate",
        "message_burst",
    ]
)
notice_shaped = st.dictionaries(keys | st.text(max_size=8), json_ish, max_size=8)
device_ids = st.builds(
    lambda seed: device_id_from_public_key(bytes(SigningKey(seed).verify_key)),
    st.binary(min_size=32, max_size=32),
)
roles = st.text(min_size=1, max_size=MAX_ROLE_CHARS).filter(str.isprintable)
notices = (
    st.builds(PresenceJoin, device_ids, roles)
    | st.builds(PresenceLeave, device_ids)
    | st.builds(Undeliverable, device_ids)
)
welcomes = st.builds(
    Welcome,
    st.lists(st.tuples(device_ids, roles), max_size=4),
    st.integers(min_value=37, max_value=2**31),
    st.floats(min_value=0.001, max_value=1e9),
    st.integers(min_value=1, max_value=2**31),
)


def texts() -> st.SearchStrategy[object]:
    """What a reader may be handed: JSON of any shape, near-notices, broken text, and bytes."""
    dumped = (json_ish | notice_shaped).map(lambda value: json.dumps(value, allow_nan=True))
    return dumped | st.text(max_size=200) | st.binary(max_size=200) | json_ish


@given(texts())
def test_decoding_a_notice_returns_one_or_raises_the_protocol_error(text: object) -> None:
    try:
        notice = decode_notice(text)
    except BrokerProtocolError:
        return
    assert notice is None or isinstance(notice, PresenceJoin | PresenceLeave | Undeliverable)


@given(texts())
def test_decoding_a_welcome_returns_one_or_raises_the_protocol_error(text: object) -> None:
    try:
        welcome = decode_welcome(text)
    except BrokerProtocolError:
        return
    assert isinstance(welcome, Welcome)


@given(st.binary(max_size=300))
def test_decoding_a_batch_returns_records_or_raises_malformed_batch(data: bytes) -> None:
    try:
        records = decode_batch(data)
    except MalformedBatch:
        return
    assert all(len(address) == 32 for address, _ in records)


@given(notices)
def test_a_notice_decodes_to_what_was_encoded(
    notice: PresenceJoin | PresenceLeave | Undeliverable,
) -> None:
    assert decode_notice(encode_notice(notice)) == notice


@given(welcomes)
def test_a_welcome_decodes_to_what_was_encoded(welcome: Welcome) -> None:
    assert decode_welcome(encode_notice(welcome)) == welcome


@pytest.mark.parametrize(
    ("notice", "text"),
    [
        (PresenceLeave(DEVICE), f'{{"type":"presence","event":"leave","device_id":"{DEVICE}"}}'),
        (
            PresenceJoin(DEVICE, "daemon"),
            f'{{"type":"presence","event":"join","device_id":"{DEVICE}","role":"daemon"}}',
        ),
        (Undeliverable(DEVICE), f'{{"type":"undeliverable","device_id":"{DEVICE}"}}'),
        (
            Welcome([(DEVICE, "service")], 1048576, 2000.0, 4000),
            '{"type":"welcome","v":1,"peers":[{"device_id":"' + DEVICE + '","role":"service"}],'
            '"max_message_bytes":1048576,"message_rate":2000.0,"message_burst":4000}',
        ),
    ],
)
def test_notices_are_the_documented_compact_json(
    notice: Welcome | PresenceJoin | PresenceLeave | Undeliverable, text: str
) -> None:
    assert encode_notice(notice) == text
