"""A connection's request slots: waiting for one is part of a call's deadline, answers to
served calls never wait behind the connection's own calls, and a call the program gives up is
cancelled at the daemon, its slot held until the daemon answered it."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import trio

from meshactors.client import ClientError, DeadlineExceeded, MeshClient, RequestContext
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS
from tests.client.conftest import NETWORK, LocalDaemon, served_to_a_caller

LONG_MS = 60_000  # a call's own timeout: nothing here may depend on it running out
WAIT = 30


class _Never:
    """A handler that never answers; each call it serves is sent to `entered` first."""

    def __init__(self) -> None:
        self._send, self.entered = trio.open_memory_channel[RequestContext](math.inf)

    async def __call__(self, payload: Any, ctx: RequestContext) -> Any:
        self._send.send_nowait(ctx)
        await trio.sleep_forever()


async def test_waiting_for_a_request_slot_counts_against_the_call_deadline(
    running: LocalDaemon,
) -> None:
    never = _Never()
    async with served_to_a_caller(running, "never", never) as (_, caller, me):
        call = functools.partial(caller.rpc_call, "lan", me, "never", timeout_ms=LONG_MS)
        async with trio.open_nursery() as nursery:
            for _ in range(MAX_CONCURRENT_REQUESTS):  # every slot of the caller's connection taken
                nursery.start_soon(call)
            with trio.fail_after(WAIT):
                for _ in range(MAX_CONCURRENT_REQUESTS):
                    await never.entered.receive()
                with pytest.raises(DeadlineExceeded):
                    await caller.call("status", timeout=0.5)
            nursery.cancel_scope.cancel()


async def _echo(payload: Any, ctx: RequestContext) -> Any:
    return payload


async def test_a_client_calling_itself_far_past_its_slots_answers_every_call(
    running: LocalDaemon,
) -> None:
    """Its answers (`rpc_respond`) have slots of their own, in the client and in the daemon:
    calls holding every call slot can never keep the answers they wait for from going."""
    calls = MAX_CONCURRENT_REQUESTS * 3
    answers: list[Any] = []
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "echo", _echo)

        async def call(n: int) -> None:
            answers.append(
                (await client.rpc_call("lan", me, "echo", n, timeout_ms=LONG_MS))["payload"]
            )

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for n in range(calls):
                    nursery.start_soon(call, n)
    assert sorted(answers) == list(range(calls))


async def test_a_call_the_program_gives_up_is_cancelled_at_the_daemon_and_frees_its_slot(
    running: LocalDaemon,
) -> None:
    """The serving side is told at once, and the request keeps its slot only until the daemon
    answered it: more given-up calls than the daemon takes at once leave the client usable."""
    never = _Never()
    async with served_to_a_caller(running, "never", never) as (server, caller, me):
        events = server.events()
        call = functools.partial(caller.rpc_call, "lan", me, "never", timeout_ms=LONG_MS)
        with trio.fail_after(WAIT):
            for n in range(MAX_CONCURRENT_REQUESTS + 1):  # more than the daemon takes at once
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, n)
                    served = await never.entered.receive()
                    nursery.cancel_scope.cancel()
                async for event in events:
                    if event["kind"] == "rpc_cancelled":
                        break
                assert event["request_id"] == served.request_id
                assert event["reason"] == "cancelled"
            assert (await caller.status())["device_id"] == me


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"call": 12345}, "unknown_request"),  # no such request of this connection in flight
        ({"call": "x", "request_id": "y"}, "invalid_params"),
        ({}, "invalid_params"),
        ({"call": True}, "invalid_params"),
        ({"call": [1]}, "invalid_params"),
    ],
    ids=["unknown", "both", "neither", "bool", "array"],
)
async def test_a_cancel_by_request_line_id_names_one_in_flight(
    running: LocalDaemon, params: dict[str, Any], code: str
) -> None:
    async with MeshClient(running.paths.socket) as client:
        with pytest.raises(ClientError) as failure:
            await client.call("rpc_cancel", params)
    assert failure.value.code == code


async def test_a_call_past_its_client_deadline_is_cancelled_at_the_daemon(
    running: LocalDaemon,
) -> None:
    never = _Never()
    async with served_to_a_caller(running, "never", never) as (server, caller, me):
        events = server.events()
        params = {"network": "lan", "peer": me, "method": "never", "timeout_ms": LONG_MS}
        with trio.fail_after(WAIT):
            with pytest.raises(DeadlineExceeded):
                await caller.call("rpc_call", params, timeout=0.5)
            served = await never.entered.receive()
            async for event in events:
                if event["kind"] == "rpc_cancelled":
                    break
    assert event["request_id"] == served.request_id
    assert event["reason"] == "cancelled"
