"""`serve` and `serve_stream` refuse at once a handler that is not `async def` (awaiting what a
plain function returns would fail every call), and take an object whose `__call__` is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from meshactors.client import BinaryStream, ClientError, MeshClient, RequestContext
from tests.client.conftest import NETWORK, LocalDaemon


def plain_upper(payload: Any, ctx: RequestContext) -> Any:
    return str(payload).upper()


def plain_pipe(stream: BinaryStream) -> None:
    return None


class AsyncUpper:
    """A handler object whose `__call__` is a coroutine function."""

    async def __call__(self, payload: Any, ctx: RequestContext) -> Any:
        return str(payload).upper()


class AsyncLetters:
    """A handler object whose `__call__` is an async generator: it streams."""

    async def __call__(self, payload: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        for letter in str(payload):
            yield letter


async def test_a_plain_function_is_refused_at_once_and_async_objects_serve(
    running: LocalDaemon,
) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        with pytest.raises(TypeError, match="define it with async def"):
            await client.serve("lan", "upper", plain_upper)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="define it with async def"):
            await client.serve_stream("lan", "pipe", plain_pipe)  # type: ignore[arg-type]
        with trio.fail_after(10):
            with pytest.raises(ClientError) as unclaimed:
                await client.rpc_call("lan", me, "upper", "hi")
            assert unclaimed.value.code == "no_handler"
            await client.serve("lan", "upper", AsyncUpper())
            await client.serve("lan", "letters", AsyncLetters())
            assert (await client.rpc_call("lan", me, "upper", "hi"))["payload"] == "HI"
            async with client.rpc_call_stream("lan", me, "letters", "ab") as chunks:
                assert [chunk async for chunk in chunks] == ["a", "b"]


async def forgot_ctx(payload: Any) -> Any:
    return payload


async def forgot_ctx_letters(payload: Any) -> AsyncIterator[Any]:
    yield payload


async def test_a_handler_called_wrong_answers_remote_error_and_the_client_goes_on(
    running: LocalDaemon,
) -> None:
    """A handler that raises as it is called (here: no `ctx` parameter) answers its error, as
    one that raises later does, instead of ending the client with every claim it holds."""
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "forgot", forgot_ctx)  # type: ignore[arg-type]
        await client.serve("lan", "forgot_letters", forgot_ctx_letters)  # type: ignore[arg-type]
        await client.serve("lan", "upper", AsyncUpper())
        with trio.fail_after(10):
            with pytest.raises(ClientError) as single:
                await client.rpc_call("lan", me, "forgot", "hi")
            with pytest.raises(ClientError) as streamed:
                async with client.rpc_call_stream("lan", me, "forgot_letters", "ab") as chunks:
                    [chunk async for chunk in chunks]
            assert (await client.rpc_call("lan", me, "upper", "hi"))["payload"] == "HI"
    for failure in (single.value, streamed.value):
        assert failure.code == "remote_error"
        assert "positional argument" in failure.message
