"""Signed hello: what a valid one carries, and each way a bad one is refused."""

import base64
import json
from typing import Any

import pytest
from nacl.signing import SigningKey

from meshactors.wire.broker import (
    HELLO_DOMAIN,
    MAX_CLOCK_SKEW_MS,
    HelloRejected,
    RejectReason,
    build_hello,
    verify_hello,
)
from meshactors.wire.device_id import device_id_from_public_key

NOW = 1_700_000_000_000
KEY = SigningKey(bytes(range(32)))


def hello_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(build_hello(KEY, "net-1", "daemon", now_ms=NOW))
    fields.update(overrides)
    return fields


def rejection(text: str, now_ms: int = NOW) -> RejectReason:
    with pytest.raises(HelloRejected) as caught:
        verify_hello(text, now_ms=now_ms)
    return caught.value.reason


def test_valid_hello_verifies_to_its_identity() -> None:
    text = build_hello(KEY, "net-1", "control-plane", now_ms=NOW, nonce=b"\x07" * 16)
    hello = verify_hello(text, now_ms=NOW + 1000)
    assert hello.network == "net-1"
    assert hello.public_key == KEY.verify_key.encode()
    assert hello.device_id == device_id_from_public_key(hello.public_key)
    assert hello.role == "control-plane"
    assert hello.ts_ms == NOW
    assert hello.nonce == base64.b64encode(b"\x07" * 16).decode()


def test_signature_covers_the_documented_domain_separated_bytes() -> None:
    fields = hello_fields()
    signed = (
        HELLO_DOMAIN
        + "\n".join(
            [
                fields["network"],
                fields["device_id"],
                str(fields["ts"]),
                fields["nonce"],
                fields["role"],
            ]
        ).encode()
    )
    KEY.verify_key.verify(signed, base64.b64decode(fields["sig"]))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("[1, 2]", id="not-object"),
        pytest.param(
            json.dumps({k: v for k, v in hello_fields().items() if k != "ts"}), id="missing"
        ),
        pytest.param(json.dumps(hello_fields(extra=1)), id="extra-key"),
        pytest.param(json.dumps(hello_fields(type="welcome")), id="wrong-type"),
        pytest.param(json.dumps(hello_fields(v=2)), id="wrong-version"),
        pytest.param(json.dumps(hello_fields(v=True)), id="bool-version"),
        pytest.param(json.dumps(hello_fields(network="")), id="empty-network"),
        pytest.param(json.dumps(hello_fields(network="a/b")), id="network-charset"),
        pytest.param(json.dumps(hello_fields(network="n" * 65)), id="network-too-long"),
        pytest.param(json.dumps(hello_fields(role="r" * 33)), id="role-too-long"),
        pytest.param(json.dumps(hello_fields(role="a\nb")), id="role-control-char"),
        pytest.param(json.dumps(hello_fields(ts=str(NOW))), id="ts-string"),
        pytest.param(json.dumps(hello_fields(ts=float(NOW))), id="ts-float"),
        pytest.param(json.dumps(hello_fields(device_id="abc")), id="bad-device-id"),
        pytest.param(json.dumps(hello_fields(nonce="AAAA")), id="short-nonce"),
        pytest.param(json.dumps(hello_fields(nonce="!" * 24)), id="nonce-not-b64"),
        pytest.param(
            json.dumps(hello_fields(sig=base64.b64encode(b"x" * 63).decode())), id="short-sig"
        ),
        pytest.param(" " * 2000, id="oversize"),
    ],
)
def test_malformed_hellos_are_refused(text: str) -> None:
    assert rejection(text) == RejectReason.MALFORMED_HELLO


def test_signature_by_another_key_is_refused() -> None:
    other = json.loads(build_hello(SigningKey(bytes(32)), "net-1", "daemon", now_ms=NOW))
    assert rejection(json.dumps(hello_fields(sig=other["sig"]))) == RejectReason.BAD_SIGNATURE


def test_signed_fields_cannot_be_changed() -> None:
    assert rejection(json.dumps(hello_fields(network="net-2"))) == RejectReason.BAD_SIGNATURE
    assert rejection(json.dumps(hello_fields(ts=NOW + 1))) == RejectReason.BAD_SIGNATURE
    assert rejection(json.dumps(hello_fields(role="control-plane"))) == RejectReason.BAD_SIGNATURE


@pytest.mark.parametrize("offset", [MAX_CLOCK_SKEW_MS + 1, -(MAX_CLOCK_SKEW_MS + 1)])
def test_timestamps_outside_the_skew_window_are_stale(offset: int) -> None:
    text = build_hello(KEY, "net-1", "daemon", now_ms=NOW)
    assert rejection(text, now_ms=NOW + offset) == RejectReason.STALE_TIMESTAMP
    assert verify_hello(text, now_ms=NOW + offset - (1 if offset > 0 else -1)).ts_ms == NOW


def test_build_hello_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="network"):
        build_hello(KEY, "bad net", "daemon", now_ms=NOW)
    with pytest.raises(ValueError, match="role"):
        build_hello(KEY, "net", "", now_ms=NOW)
    with pytest.raises(ValueError, match="nonce"):
        build_hello(KEY, "net", "daemon", now_ms=NOW, nonce=b"short")
