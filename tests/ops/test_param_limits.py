"""Params that would fail later are refused where a request enters, with `invalid_params` and
the field's path: integers beyond 64 bits, lone surrogates, numbers that are not finite,
nesting past 64 levels, and page sizes past their cap. Each case answered `internal` (or
crashed the connection) before."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshactors.daemon.services import Services
from meshactors.network.payload import MAX_PAYLOAD_DEPTH
from tests.daemon_tree import Connect
from tests.ops.test_message_ops import NET, joined, new_device

SURROGATE = "\ud800"
HUGE = 10**23
WAIT = 10


async def refused(client: Any, op: str, **params: Any) -> str:
    """The message of the `invalid_params` answer to `op` (the test fails on anything else)."""
    with trio.fail_after(WAIT):
        answer = await client.call(op, **params)
    assert not answer["ok"], answer
    assert answer["error"]["code"] == "invalid_params", answer
    message: str = answer["error"]["message"]
    return message


async def still_answers(client: Any) -> None:
    with trio.fail_after(WAIT):
        assert (await client.call("status"))["ok"]


@pytest.mark.parametrize(
    ("op", "params", "path"),
    [
        ("inbox", {"since": HUGE}, "params.since"),
        ("events_subscribe", {"since": HUGE}, "params.since"),
        ("send", {"network": NET, "to": "@all", "message": SURROGATE}, "params.message"),
        ("capabilities_set", {"network": NET, "extra": {"k": [1, SURROGATE]}}, "params.extra.k[1]"),
        ("profile_set", {"display_name": SURROGATE}, "params.display_name"),
        ("profile_set", {"summary": "x", "status": "idle", "extra": float("nan")}, "params.extra"),
        (
            "network_update",
            {"config": {"id": NET, "brokers": [SURROGATE]}},
            "params.config.brokers[0]",
        ),
    ],
    ids=[
        "inbox-since",
        "events-since",
        "send-message",
        "caps-extra",
        "profile-name",
        "profile-nan",
        "network-broker",
    ],
)
async def test_a_value_nothing_could_store_is_refused_with_its_path(
    connect: Any, op: str, params: dict[str, Any], path: str
) -> None:
    client = await joined(connect)
    message = await refused(client, op, **params)
    assert message.startswith(f"{path}: "), message
    await still_answers(client)


async def test_a_channel_send_to_our_own_id_with_a_lone_surrogate(
    connect: Any, daemon: Services
) -> None:
    client = await joined(connect)
    me = daemon.identity.device_id
    message = await refused(
        client, "channel_send_to", network=NET, channel="c", peer=me, payload={"t": SURROGATE}
    )
    assert message.startswith("params.payload.t: ")
    await still_answers(client)


async def test_nesting_past_the_limit_is_refused(connect: Any) -> None:
    client = await joined(connect)
    deep: Any = "bottom"
    for _ in range(70):
        deep = [deep]
    message = await refused(client, "send", network=NET, to=new_device(), message="m", meta=deep)
    assert message.startswith("params.meta") and "nested deeper than 64" in message


@pytest.mark.parametrize("op", ["inbox", "outbox_list"])
async def test_a_page_past_its_cap_is_refused_not_cut(connect: Any, op: str) -> None:
    client = await joined(connect)
    assert "limit must be 1-500, got 501" in await refused(client, op, limit=501)
    with trio.fail_after(WAIT):
        assert (await client.call(op, limit=500))["ok"]


async def test_a_payload_a_peer_would_drop_for_its_depth_is_refused(
    connect: Any, daemon: Services
) -> None:
    client = await joined(connect)
    deep: Any = 0
    for _ in range(MAX_PAYLOAD_DEPTH + 1):  # within the params' 64, past what a frame holds
        deep = [deep]
    me = daemon.identity.device_id
    message = await refused(
        client, "channel_send_to", network=NET, channel="c", peer=me, payload=deep
    )
    assert message.startswith("params.payload: nested deeper than 62")


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /v1/events?since=100000000000000000000000 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 100000000000000000000000\r\n\r\n",
    ],
    ids=["query", "header"],
)
async def test_an_event_stream_from_beyond_64_bits_is_refused(
    http: Connect, request_line: bytes
) -> None:
    client = await http()
    await client.send(request_line)
    response = await client.response()
    assert (response.status, response.code) == (400, "invalid_params")
