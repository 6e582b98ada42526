"""The hot-path JSON helpers say exactly what `json` says, for good input and bad."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshactors.wire.compact import dumps_ascii, dumps_strict, dumps_utf8, json_size, loads

VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    1e300,
    "",
    "plain",
    'é ☃ \U0001f600 "quoted" \\ \n \x00',
    "\ud800 lone surrogate",
    [],
    [1, [2, [3, {"a": None}]]],
    {"id": 7, "op": "rpc_call", "payload": {"nested": ["x" * 50, False]}},
]


@pytest.mark.parametrize("value", VALUES)
def test_the_encoders_write_what_json_dumps_writes(value: Any) -> None:
    compact: dict[str, Any] = {"separators": (",", ":")}
    assert dumps_strict(value) == json.dumps(value, allow_nan=False, **compact)
    assert dumps_ascii(value) == json.dumps(value, **compact)
    assert dumps_utf8(value) == json.dumps(value, ensure_ascii=False, **compact)
    assert json_size(value) == len(dumps_strict(value).encode())


def test_the_strict_encoder_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        dumps_strict({"x": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps_strict({"x": {1, 2}})
    assert dumps_utf8(float("inf")) == "Infinity"  # IPC lines allow what json.dumps allows


@pytest.mark.parametrize(
    "text", ['{"a":[1,2.5,"x"]}', "  {} ", "[1]\n", "17", '"s"', "null", '{"a":1,"a":2}']
)
def test_loads_reads_what_json_loads_reads(text: str) -> None:
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", " ", "{", '{"a":1} x', "\ufeff{}", "[1,]", "tru", "{} {}"])
def test_loads_fails_as_json_loads_fails(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as got:
        loads(text)
    assert str(got.value) == str(expected.value)
