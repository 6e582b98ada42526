"""A program that closes its sending side after its requests gets them all run and answered
before the daemon closes the connection (`printf … | nc -N -U` works)."""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.support import LineClient

KEYS = 100  # state writes sent in one go before the program's end of input
WAIT = 20.0  # seconds to get every answer (or every key stored)


async def added_network(connect: Any) -> LineClient:
    """A connection on which network `n` was added (its state needs no broker)."""
    client: LineClient = await connect()
    config = {"id": "n", "brokers": ["ws://127.0.0.1:9/v1"]}
    assert (await client.call("network_add", config=config))["ok"]
    return client


def state_sets(tag: str) -> bytes:
    """KEYS `state_set` lines writing `tag-<n>` = n, ids 0…KEYS-1."""
    return b"".join(
        json.dumps(
            {"id": n, "op": "state_set", "network": "n", "key": f"{tag}-{n}", "value": n}
        ).encode()
        + b"\n"
        for n in range(KEYS)
    )


async def stored(client: LineClient, tag: str) -> int:
    """How many `tag-` keys the network's state holds."""
    answer = await client.call("state_list", network="n", prefix=f"{tag}-", limit=500)
    return len(answer["data"]["entries"])


async def read_to_end(client: LineClient) -> list[dict[str, Any]]:
    """Every frame until the daemon closes the connection."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(WAIT):
        while True:
            try:
                frames.append(await client.frame())
            except EOFError:
                return frames


async def test_requests_sent_before_a_half_close_are_all_answered(connect: Any) -> None:
    other = await added_network(connect)
    client: LineClient = await connect()
    await client.send_raw(state_sets("half"))
    await client.stream.send_eof()
    frames = await read_to_end(client)
    assert sorted(frame["id"] for frame in frames if frame["ok"]) == list(range(KEYS))
    assert await stored(other, "half") == KEYS


async def test_a_last_line_without_its_newline_is_run(connect: Any) -> None:
    client: LineClient = await connect()
    await client.send_raw(b'{"id":1,"op":"status"}\n{"id":2,"op":"version"}')
    await client.stream.send_eof()
    frames = await read_to_end(client)
    assert sorted(frame["id"] for frame in frames if frame["ok"]) == [1, 2]
