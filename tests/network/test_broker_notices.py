"""What a broker says in TEXT (welcome, presence) is checked where the link reads it: a value no
part of the daemon can pass on is a malformed notice, never a crash of the link."""

from __future__ import annotations

import json

import nacl.signing
import pytest

from meshactors.wire.broker import BrokerProtocolError, decode_welcome
from meshactors.wire.device_id import device_id_from_public_key

DEVICE = device_id_from_public_key(bytes(nacl.signing.SigningKey(b"d" * 32).verify_key))


def welcome(role: str) -> str:
    return json.dumps({"type": "welcome", "v": 1, "peers": [{"device_id": DEVICE, "role": role}]})


def test_a_welcome_listing_a_good_role_is_read() -> None:
    assert decode_welcome(welcome("control-plane")).peers == [(DEVICE, "control-plane")]


@pytest.mark.parametrize("role", ["\ud800", "", "line\nbreak", "r" * 33])
def test_a_role_a_hello_could_not_carry_is_refused(role: str) -> None:
    with pytest.raises(BrokerProtocolError):
        decode_welcome(welcome(role))


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"welcome","v":1,"peers":[],"x":' + "[" * 20_000 + "]" * 20_000 + "}",
        '{"type":"welcome","v":1,"peers":[],"x":{"\\udc00":1}}',
        '{"type":"welcome","v":1,"peers":[],"x":18446744073709551616}',
        '{"type":"welcome","v":1,"peers":[],"message_rate":NaN}',
    ],
)
def test_a_notice_holding_what_the_daemon_cannot_pass_on_is_malformed(text: str) -> None:
    with pytest.raises(BrokerProtocolError):
        decode_welcome(text)
