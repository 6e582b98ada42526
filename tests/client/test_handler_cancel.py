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

from meshactors.client import ClientError, ConnectionLost, MeshClient, RequestContext
from tests.client.conftest import NETWORK, LocalDaemon, served_to_a_caller

LONG_MS = 60_000  # a call's own timeout: nothing here may depend on it running out
WAIT = 30


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
