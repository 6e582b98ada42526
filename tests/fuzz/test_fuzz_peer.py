"""Fuzz what crosses the broker: hellos and sealed peer frames are rejected with stable reasons."""

from __future__ import annotations

import nacl.signing
from hypothesis import given
from hypothesis import strategies as st

from meshactors.network.sealing import FrameRejected, PeerCrypto
from meshactors.wire.broker import HelloRejected, RejectReason, build_hello, verify_hello
from meshactors.wire.device_id import device_id_from_public_key
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import json_line, json_values, mutated

NOW_MS = 1_800_000_000_000
ALICE = nacl.signing.SigningKey(b"a" * 32)
BOB = nacl.signing.SigningKey(b"b" * 32)
GOOD_HELLO = build_hello(ALICE, "net-1", "daemon", now_ms=NOW_MS, nonce=b"n" * 16)


def device_id(key: nacl.signing.SigningKey) -> str:
    return device_id_from_public_key(bytes(key.verify_key))


@fuzz
@given(
    st.text(max_size=300)
    | json_values.map(lambda v: json_line(v).decode())
    | mutated(GOOD_HELLO.encode()).map(lambda b: b.decode("utf-8", "replace"))
)
def test_broker_hello_rejections_are_documented(text: str) -> None:
    try:
        hello = verify_hello(text, now_ms=NOW_MS)
    except HelloRejected as rejected:
        assert rejected.reason in set(RejectReason)
    else:
        assert hello.device_id == device_id(ALICE)


SEALED = PeerCrypto.for_peer(ALICE, device_id(BOB)).seal(b'{"t":"ping","n":1}')


@fuzz
@given(st.binary(max_size=200) | mutated(SEALED))
def test_sealed_frames_open_only_untouched(data: bytes) -> None:
    opener = PeerCrypto.for_peer(BOB, device_id(ALICE))
    try:
        plaintext = opener.open(data)
    except FrameRejected as rejected:
        assert rejected.reason in {"tampered", "replayed"}
    else:
        assert data == SEALED
        assert plaintext == b'{"t":"ping","n":1}'
