"""A served call that ends without its answer (its caller cancelled it, it timed out, or the
connection it came over was lost) has its handler cancelled: a coroutine's task, a generator
closed, whatever it was waiting on."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.client import ClientError, ConnectionLost, MeshClient, RequestContext, _streams
from meshactors.client.mesh import EventStream
from tests.client.conftest import NETWORK, LocalDaemon, served_to_a_caller

LONG_MS = 60_000  # a call's own timeout: nothing here may depend on it running out
WAIT = 30
UNREAD_CHUNKS = 4  # the caller's stream buffer here: one chunk more and it lags


class _Stuck:
    """Handlers that wait forever: `entered` once one runs, `left` once its cleanup ran."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.left = trio.Event()

    async def call(self, payload: Any, ctx: RequestContext) -> Any:
        try:
            self.entered.set()
            await trio.sleep_forever()
        finally:
            self.left.set()

    async def stream(self, payload: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        try:
            self.entered.set()
            await trio.sleep_forever()
            yield None
        finally:
            self.left.set()


async def test_a_handler_is_cancelled_when_its_caller_cancels(running: LocalDaemon) -> None:
    stuck = _Stuck()
    async with served_to_a_caller(running, "stuck", stuck.call) as (_, caller, me):
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(caller.rpc_call, "lan", me, "stuck", timeout_ms=LONG_MS)
                )
                await stuck.entered.wait()
                nursery.cancel_scope.cancel()
            await stuck.left.wait()


async def test_a_handler_is_cancelled_when_its_call_times_out(running: LocalDaemon) -> None:
    stuck = _Stuck()
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "stuck", stuck.call)
        with trio.fail_after(WAIT):
            with pytest.raises(ClientError) as failure:
                await client.rpc_call("lan", me, "stuck", timeout_ms=100)
            assert failure.value.code == "timeout"
            await stuck.left.wait()


async def test_a_streaming_handler_waiting_between_chunks_is_closed_when_its_caller_leaves(
    running: LocalDaemon,
) -> None:
    stuck = _Stuck()
    async with served_to_a_caller(running, "stuck", stuck.stream) as (_, caller, me):
        with trio.fail_after(WAIT):
            async with caller.rpc_call_stream("lan", me, "stuck", timeout_ms=LONG_MS):
                await stuck.entered.wait()
            await stuck.left.wait()


async def test_a_streaming_handler_is_closed_when_its_caller_gives_up_before_the_answer(
    running: LocalDaemon,
) -> None:
    """The call is opened after its caller stopped waiting: its answer, naming it, cancels it."""
    stuck = _Stuck()
    async with served_to_a_caller(running, "stuck", stuck.stream) as (_, caller, me):
        assert running.services is not None
        network = running.services.networks.get("lan")
        holding, release = trio.Event(), trio.Event()

        async def hold() -> None:
            holding.set()
            await release.wait()

        async def give_up(opening: trio.CancelScope) -> None:
            with opening:
                async with caller.rpc_call_stream("lan", me, "stuck", timeout_ms=LONG_MS):
                    raise AssertionError("its caller gave up before the answer")

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(network.ask_await, "hold core", hold)
                await holding.wait()  # the call is opened only once core moves on
                opening = trio.CancelScope()
                nursery.start_soon(give_up, opening)
                await trio.testing.wait_all_tasks_blocked()  # the request waits behind the hold
                opening.cancel()
                release.set()
            await stuck.entered.wait()
            await stuck.left.wait()
            figures = await network.ask("figures", network.rpc.figures)
        assert figures["outbound"] == 0


class _Endless:
    """A streaming handler that yields chunks until it is closed: `left` once it was."""

    def __init__(self) -> None:
        self.left = trio.Event()

    async def stream(self, payload: Any, ctx: RequestContext) -> AsyncIterator[Any]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            self.left.set()


async def _nth(events: EventStream, n: int, kind: str, **fields: Any) -> dict[str, Any]:
    """The `n`-th event of `kind` that has `fields`."""
    async for event in events:
        if event.get("kind") == kind and fields.items() <= event.items():
            n -= 1
            if not n:
                return event
    raise AssertionError(f"the events ended before {kind}")


async def test_a_streaming_handler_is_closed_when_its_caller_lagged_and_left(
    running: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that failed only in the client (`lagged`) is cancelled at the daemon when its
    caller leaves, not left running until its timeout."""
    monkeypatch.setattr(_streams, "STREAM_BUFFER", UNREAD_CHUNKS)
    endless = _Endless()
    async with served_to_a_caller(running, "endless", endless.stream) as (server, caller, me):
        with trio.fail_after(WAIT), server.events() as told, caller.events() as seen:
            async with caller.rpc_call_stream("lan", me, "endless", timeout_ms=LONG_MS) as chunks:
                # an event is published once routed: the stream has lagged by the last of these
                chunk = "rpc_call_stream_chunk"
                await _nth(seen, UNREAD_CHUNKS + 1, chunk, request_id=chunks.request_id)
                with pytest.raises(ClientError) as failure:
                    async for _ in chunks:
                        pass
                assert failure.value.code == "lagged"
            # told by the caller's cancel, not by its daemon's own lag accounting
            await _nth(told, 1, "rpc_cancelled", reason="cancelled")
            await endless.left.wait()


async def _call_lost(call: Callable[[], Awaitable[Any]]) -> None:
    """Make a call that the daemon's going away ends."""
    with pytest.raises(ConnectionLost):
        await call()


async def _stream_lost(caller: MeshClient, peer: str) -> None:
    async with caller.rpc_call_stream("lan", peer, "stuck_stream", timeout_ms=LONG_MS) as chunks:
        with pytest.raises(ConnectionLost):
            async for _ in chunks:
                pass


async def test_handlers_are_cancelled_when_the_connection_is_lost(local: LocalDaemon) -> None:
    await local.start()
    stuck, stuck_stream = _Stuck(), _Stuck()
    async with MeshClient(local.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "stuck", stuck.call)
        await client.serve("lan", "stuck_stream", stuck_stream.stream)
        call = functools.partial(client.rpc_call, "lan", me, "stuck", timeout_ms=LONG_MS)
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_call_lost, call)
                nursery.start_soon(_stream_lost, client, me)
                await stuck.entered.wait()
                await stuck_stream.entered.wait()
                await local.stop()  # the daemon goes: the connection they came over is lost
                await stuck.left.wait()
                await stuck_stream.left.wait()
