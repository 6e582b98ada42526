"""`rpc_cancel` names its call by `request_id` or by `call`: a request with neither is told
one is required, one with both that only one may be given."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import LineClient


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give request_id or call: one is required"),
        ({"request_id": "r1", "call": 5}, "give request_id or call, not both"),
    ],
)
async def test_a_cancel_naming_no_call_or_two_says_which(
    connect: Any, params: dict[str, Any], message: str
) -> None:
    client: LineClient = await connect()
    refused = await client.call("rpc_cancel", **params)
    assert refused["error"] == {"code": "invalid_params", "message": message}
