"""A connection's request slots: waiting for one is part of a call's deadline, answers to
served calls never wait behind the connection's own calls, and a call the program gives up is
cancelled at the daemon, its slot held until the daemon answered it."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio

from meshactors.client import DeadlineExceeded, MeshClient, RequestContext
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS
from tests.client.conftest import LocalDaemon

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
LONG_MS = 60_000  # a call's own timeout: nothing here may depend on it running out
WAIT = 30


class _Never:
    """A handler that never answers; `all_in` is set once `expected` calls are being served."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.entered = 0
        self.all_in = trio.Event()

    async def __call__(self, payload: Any, ctx: RequestContext) -> Any:
        self.entered += 1
        if self.entered == self.expected:
            self.all_in.set()
        await trio.sleep_forever()


async def test_waiting_for_a_request_slot_counts_against_the_call_deadline(
    running: LocalDaemon,
) -> None:
    never = _Never(MAX_CONCURRENT_REQUESTS)
    async with (
        MeshClient(running.paths.socket) as server,
        MeshClient(running.paths.socket) as caller,
    ):
        await server.ensure_networks([NETWORK])
        me = (await server.status())["device_id"]
        await server.serve("lan", "never", never)
        call = functools.partial(caller.rpc_call, "lan", me, "never", timeout_ms=LONG_MS)
        async with trio.open_nursery() as nursery:
            for _ in range(MAX_CONCURRENT_REQUESTS):  # every slot of the caller's connection taken
                nursery.start_soon(call)
            with trio.fail_after(WAIT):
                await never.all_in.wait()
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
