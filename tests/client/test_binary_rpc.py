"""Binary RPC: a call sent with `data=` reaches its handler as bytes, bytes a handler returns
or yields go back binary, and the caller gets them as bytes, single answers and chunks alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from meshactors.client import MeshClient, RequestContext
from tests.client.conftest import LocalDaemon

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
BLOB = bytes(range(256))  # not text in any encoding
WAIT = 30


async def test_a_binary_call_reaches_its_handler_as_bytes_and_bytes_answer_it(
    running: LocalDaemon,
) -> None:
    seen: list[Any] = []

    async def echo(payload: Any, ctx: RequestContext) -> Any:
        seen.append(payload)
        return payload

    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "echo", echo)
        with trio.fail_after(WAIT):
            binary = await client.rpc_call("lan", me, "echo", data=BLOB)
            empty = await client.rpc_call("lan", me, "echo", data=b"")
            json = await client.rpc_call("lan", me, "echo", {"n": 1})
    assert seen == [BLOB, b"", {"n": 1}]
    assert binary["data"] == BLOB
    assert empty["data"] == b""
    assert json == {"payload": {"n": 1}}


async def test_a_streamed_answer_carries_binary_chunks_as_bytes(running: LocalDaemon) -> None:
    async def pieces(payload: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        yield payload
        yield bytearray(b"more")
        yield {"json": "still"}

    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "pieces", pieces)
        with trio.fail_after(WAIT):
            async with client.rpc_call_stream("lan", me, "pieces", data=BLOB) as chunks:
                assert [chunk async for chunk in chunks] == [BLOB, b"more", {"json": "still"}]
