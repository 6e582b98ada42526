"""A streamed call given up (its block left before the daemon ended it, or its call given up
before its answer) whose cancel fails keeps no id in the client's stream table: the daemon may
never send the end that would drop it (a core restart lost the call, and `unavailable` or
`timeout` answers the cancel), and the table would hold it until the next lag or reconnect."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors.client import MeshClient
from tests.client.fakedaemon import fake_session

REFUSED_CANCEL_WAIT = 10.0  # seconds for a stream's call, its cancel and their answers
# what a cancel may meet that says nothing of the stream's end (besides no answer at all)
CANCEL_REFUSALS = ("unavailable", "timeout")


def waiting_for_an_end(client: MeshClient) -> set[str]:
    """The ids of streams given up whose end the client's stream table still waits for."""
    return set(client._streams._left)


@pytest.mark.parametrize("code", [*CANCEL_REFUSALS, "unknown_request"])
async def test_a_left_stream_whose_cancel_fails_is_waited_for_no_longer(
    tmp_path: Path, code: str
) -> None:
    async with fake_session(tmp_path) as (daemon, client, session):
        daemon.refused["rpc_cancel"] = code
        with trio.fail_after(REFUSED_CANCEL_WAIT):
            async with client.rpc_call_stream("lan", "peer", "bulk"):
                pass  # left before the daemon ended it: the cancel is refused on the way out
        assert (session.ops.count("rpc_cancel"), waiting_for_an_end(client)) == (1, set())


@pytest.mark.parametrize("code", CANCEL_REFUSALS)
async def test_a_stream_given_up_before_its_answer_whose_cancel_fails_is_not_waited_for(
    tmp_path: Path, code: str
) -> None:
    async with fake_session(tmp_path) as (daemon, client, session):
        daemon.held["rpc_call_stream"] = answer = trio.Event()
        daemon.refused["rpc_cancel"] = code
        given_up = trio.CancelScope()

        async def give_up() -> None:
            with given_up:
                async with client.rpc_call_stream("lan", "peer", "bulk"):
                    pytest.fail("its answer was held until it was given up")

        with trio.fail_after(REFUSED_CANCEL_WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(give_up)
                await session.wait_op("rpc_call_stream")
                given_up.cancel()
            answer.set()  # names s1: the client cancels it, and the cancel is refused
            await session.wait_op("rpc_cancel")
            await client.call("status")  # answered after the refusal, so read after it
        await trio.testing.wait_all_tasks_blocked()  # the refusal's marker is routed
        assert waiting_for_an_end(client) == set()
