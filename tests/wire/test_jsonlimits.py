"""check_json: what a JSON value from outside may hold."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshactors.wire.jsonlimits import MAX_JSON_DEPTH, BadJson, check_json
from meshactors.wire.peer import BadPeerFrame, Bye, decode_frame


def nested(depth: int) -> Any:
    return json.loads("[" * depth + "]" * depth)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        2**63 - 1,
        -(2**63),
        1.5e308,
        "é\U0001f600",
        {"é": ["\U0001f600", {"k": None}]},
        nested(MAX_JSON_DEPTH),
    ],
)
def test_values_every_part_of_the_daemon_can_pass_on_are_taken(value: Any) -> None:
    check_json(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("\ud800", "bad_value"),
        (["ok", "x\udfffy"], "bad_value"),
        ({"\udc00": 1}, "bad_value"),
        (2**63, "bad_value"),
        ([-(2**63) - 1], "bad_value"),
        (float("nan"), "bad_value"),
        ({"x": float("-inf")}, "bad_value"),
        ((1, 2), "bad_value"),
        (nested(MAX_JSON_DEPTH + 1), "too_deep"),
        ({"k": nested(MAX_JSON_DEPTH)}, "too_deep"),
    ],
)
def test_values_no_part_can_pass_on_are_refused_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(BadJson) as refused:
        check_json(value)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"t":"ping","token":1e400}', "bad_value"),
        (b'{"t":"ping","token":NaN}', "bad_value"),
        (b'{"t":"ping","token":18446744073709551616}', "bad_value"),
        (b'{"t":"bye","reason":"\\ud800"}', "bad_value"),
        (b'{"t":"ping","token":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_deep"),
    ],
)
def test_decode_frame_refuses_them_before_structuring(data: bytes, reason: str) -> None:
    with pytest.raises(BadPeerFrame) as bad:
        decode_frame(data)
    assert bad.value.reason == reason


def test_a_surrogate_pair_escaped_in_json_is_one_character_and_taken() -> None:
    frame = decode_frame(b'{"t":"bye","reason":"\\ud83d\\ude00"}')
    assert frame == Bye("\U0001f600")
