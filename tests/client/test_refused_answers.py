"""A served method's answer the daemon refuses for what it carries (not JSON it takes, over the
payload or line cap) still answers the caller at once, with `remote_error` saying why, instead
of leaving it to wait out its timeout; the serving program is warned."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from meshactors.client import ClientError, MeshClient, RequestContext
from meshactors.network.app_frames import MAX_ERROR_CHARS
from meshactors.network.payload import MAX_PAYLOAD_BYTES
from meshactors.wire.ipc import MAX_FRAME_BYTES
from tests.client.conftest import LocalDaemon

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
LONG_MS = 60_000  # the call's own timeout: an answer must come well before it
WAIT = 15


def _holds_itself() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


async def _echo(payload: Any, ctx: RequestContext) -> Any:
    return payload


@pytest.mark.parametrize(
    ("result", "refused"),
    [
        (float("nan"), "invalid_params: "),
        (2**70, "invalid_params: "),
        ("x" * (MAX_PAYLOAD_BYTES + 1), "payload_too_large: "),
        ("x" * MAX_FRAME_BYTES, "frame_too_large: "),
        ({1, 2}, "invalid_params: not JSON: "),
        (object(), "invalid_params: not JSON: "),
        ({(1, 2): "tuple key"}, "invalid_params: not JSON: "),
        (_holds_itself(), "invalid_params: not JSON: "),
    ],
    ids=[
        *("nan", "2**70", "over_payload_cap", "over_line_cap"),
        *("set", "object", "tuple_key", "holds_itself"),
    ],
)
async def test_a_refused_result_answers_remote_error_at_once_and_the_client_goes_on(
    running: LocalDaemon, caplog: pytest.LogCaptureFixture, result: Any, refused: str
) -> None:
    async def handler(payload: Any, ctx: RequestContext) -> Any:
        return result

    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "odd", handler)
        await client.serve("lan", "echo", _echo)
        with trio.fail_after(WAIT):
            with pytest.raises(ClientError) as failure:
                await client.rpc_call("lan", me, "odd", None, timeout_ms=LONG_MS)
            echoed = await client.rpc_call("lan", me, "echo", [1, 2], timeout_ms=LONG_MS)
    assert failure.value.code == "remote_error"
    assert failure.value.message.startswith(f"handler result refused: {refused}")
    assert echoed["payload"] == [1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"odd on lan: its answer was refused: {refused}" in w for w in warnings)


@pytest.mark.parametrize(
    ("bad", "refused"),
    [
        ("x" * (MAX_PAYLOAD_BYTES + 1), "payload_too_large: "),
        ("x" * MAX_FRAME_BYTES, "frame_too_large: "),
        ({1, 2}, "invalid_params: not JSON: "),
    ],
    ids=["payload_too_large", "frame_too_large", "not_json"],
)
async def test_a_refused_chunk_ends_the_stream_with_remote_error_and_the_client_goes_on(
    running: LocalDaemon, bad: Any, refused: str
) -> None:
    closed = trio.Event()

    async def chunks(payload: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        try:
            yield "first"
            yield bad
            yield "never sent"
        finally:
            closed.set()

    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "big", chunks)
        await client.serve("lan", "echo", _echo)
        received = []
        with trio.fail_after(WAIT):
            async with client.rpc_call_stream("lan", me, "big", timeout_ms=LONG_MS) as stream:
                with pytest.raises(ClientError) as failure:
                    async for chunk in stream:
                        received.append(chunk)
            await closed.wait()
            echoed = await client.rpc_call("lan", me, "echo", "still here", timeout_ms=LONG_MS)
    assert received == ["first"]
    assert failure.value.code == "remote_error"
    assert failure.value.message.startswith(f"handler result refused: {refused}")
    assert echoed["payload"] == "still here"


async def test_a_handler_error_too_long_to_carry_answers_its_start(running: LocalDaemon) -> None:
    async def wordy(payload: Any, ctx: RequestContext) -> Any:
        raise ValueError("why " * MAX_ERROR_CHARS)

    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "wordy", wordy)
        with trio.fail_after(WAIT), pytest.raises(ClientError) as failure:
            await client.rpc_call("lan", me, "wordy", None, timeout_ms=LONG_MS)
    assert failure.value.code == "remote_error"
    assert failure.value.message == ("why " * MAX_ERROR_CHARS)[:MAX_ERROR_CHARS]


async def test_a_caller_that_left_stops_the_stream_quietly(
    running: LocalDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    closed = trio.Event()

    async def endless(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    caplog.set_level(logging.DEBUG, "meshactors.client")
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "endless", endless)
        with trio.fail_after(WAIT):
            async with client.rpc_call_stream("lan", me, "endless", timeout_ms=LONG_MS) as stream:
                assert await stream.__anext__() == 0
            await closed.wait()
    # closed by `rpc_cancelled`, or by a chunk the daemon no longer takes, as the race goes
    client_records = [r for r in caplog.records if r.name == "meshactors.client"]
    assert [r.getMessage() for r in client_records if r.levelno >= logging.WARNING] == []
