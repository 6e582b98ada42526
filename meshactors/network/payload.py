"""Application payloads: any JSON value, or binary carried as base64 text, under one size cap."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import attrs

from meshactors.wire.compact import json_size
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH, BadJson, check_json

MAX_PAYLOAD_BYTES = 128 * 1024  # a payload as compact JSON (base64 text for binary)
MAX_METHOD_OR_CHANNEL_CHARS = 128  # a method or channel name
# a string's strict JSON is 2 quotes and at most 12 bytes a character (a surrogate pair's escapes)
_SURELY_FITTING_CHARS = (MAX_PAYLOAD_BYTES - 2) // 12
MAX_BATCH = 1024  # payloads in one channel send (`payloads`); all of them within MAX_PAYLOAD_BYTES
# a payload sits up to 2 containers deep in a peer frame (a `chan_run`'s list of payloads),
# and a peer counts the frame's depth against MAX_JSON_DEPTH: nested deeper, it is dropped there
MAX_PAYLOAD_DEPTH = MAX_JSON_DEPTH - 2


@attrs.frozen
class Payload:
    """A JSON value, or (with `binary`) the base64 text of some bytes."""

    value: Any = None
    binary: bool = False

    def fields(self) -> dict[str, Any]:
        """The payload as an event shows it: `payload`, or `payload_b64` for binary."""
        return {"payload_b64": self.value} if self.binary else {"payload": self.value}

    @property
    def size(self) -> int:
        """Bytes of the payload as compact JSON."""
        return _json_size(self.value)


def payload_of(payload: Any, payload_b64: str | None) -> Payload:
    """The payload of an op's params, checked (OpError invalid_params, payload_too_large)."""
    if payload_b64 is not None:
        if payload is not None:
            raise OpError(ErrorCode.INVALID_PARAMS, "give `payload` or `payload_b64`, not both")
        try:
            base64.b64decode(payload_b64, validate=True)
        except (binascii.Error, ValueError):
            raise OpError(ErrorCode.INVALID_PARAMS, "`payload_b64` is not valid base64") from None
        result = Payload(payload_b64, binary=True)
    else:
        try:
            check_json(payload, MAX_PAYLOAD_DEPTH)  # the rest was checked with the params
        except BadJson as bad:
            raise OpError(ErrorCode.INVALID_PARAMS, f"params.payload: {bad.detail}") from None
        result = Payload(payload)
    check_size(result)
    return result


def payloads_of(payload: Any, payload_b64: str | None, payloads: list[Any] | None) -> list[Payload]:
    """One payload, or a batch given as `payloads` (JSON values, in order, at most MAX_BATCH
    and MAX_PAYLOAD_BYTES in all)."""
    if payloads is None:
        return [payload_of(payload, payload_b64)]
    if payload is not None or payload_b64 is not None:
        raise OpError(ErrorCode.INVALID_PARAMS, "give `payloads` or a single payload, not both")
    if not 0 < len(payloads) <= MAX_BATCH:
        raise OpError(ErrorCode.INVALID_PARAMS, f"`payloads` holds 1-{MAX_BATCH} values")
    check_size(Payload(payloads))
    return [Payload(value) for value in payloads]


def check_size(payload: Payload) -> None:
    """OpError payload_too_large beyond MAX_PAYLOAD_BYTES."""
    value = payload.value
    if type(value) is str and len(value) <= _SURELY_FITTING_CHARS:
        return  # fits even if every character is escaped: no need to encode it to know
    if type(value) is list and all(type(item) is str for item in value):
        worst = 12 * sum(map(len, value)) + 3 * len(value) + 1  # quotes, commas, brackets
        if worst <= MAX_PAYLOAD_BYTES:
            return  # a batch of strings that fits however they are escaped
    size = payload.size
    if size > MAX_PAYLOAD_BYTES:
        raise OpError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"payload is {size} bytes as ASCII-escaped JSON; the limit is {MAX_PAYLOAD_BYTES}",
        )


def check_name(value: str, what: str) -> None:
    """OpError invalid_params unless `value` is 1-MAX_METHOD_OR_CHANNEL_CHARS printable
    characters."""
    limit = MAX_METHOD_OR_CHANNEL_CHARS
    if not 0 < len(value) <= limit or not value.isprintable():
        raise OpError(ErrorCode.INVALID_PARAMS, f"{what} must be 1-{limit} printable characters")


def _json_size(value: Any) -> int:
    try:
        return json_size(value)
    except (TypeError, ValueError) as exc:
        raise OpError(ErrorCode.INVALID_PARAMS, f"payload is not JSON: {exc}") from None
