"""A streamed call given up (its block left before the daemon ended it, or its call given up
before its answer) whose cancel fails or runs out of time is still told apart: what the
daemon sends of it later is dropped until its end or its deadline, never held as the early
events of a stream being opened, where it would count against EARLY_FRAMES and fail that
stream `lagged`. The table holds it no longer than its deadline (the daemon has ended the
stream by then, or lost it), and at most LEFT_STREAMS of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.client import MeshClient, RequestContext, _conn, _streams, mesh
from meshactors.client.mesh import EventStream
from tests.client.conftest import LocalDaemon, served_to_a_caller
from tests.client.fakedaemon import FakeConnection, fake_session

REFUSED_CANCEL_WAIT = 30.0  # seconds for a stream's call, its cancel and their answers
# what a cancel may meet that says nothing of the stream's end (besides no answer at all)
CANCEL_REFUSALS = ("unavailable", "timeout", "unknown_request")
LATE_CHUNKS = 3  # chunks of the stream left that come while another is being opened
OPENED_CHUNK = "opened"  # the one chunk of the stream being opened meanwhile


def fewer_early_frames_than_late_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold fewer early events than LATE_CHUNKS: counted there, they fail the stream opened."""
    monkeypatch.setattr(_streams, "EARLY_FRAMES", LATE_CHUNKS - 1)


async def routed(events: EventStream, left: str) -> None:
    """Wait until `events` (a reader of the client's events) got LATE_CHUNKS chunks of the
    stream `left`: the client routes each to its stream table before its readers get it."""
    seen = 0
    async for event in events:
        if event["kind"] == "rpc_call_stream_chunk" and event["request_id"] == left:
            seen += 1
            if seen == LATE_CHUNKS:
                return


async def test_late_chunks_of_a_stream_whose_cancel_ran_out_never_fail_one_being_opened(
    running: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel on the way out of the block runs out of time (RELEASE_TIMEOUT, here none):
    the stream runs on at the daemon, and its chunks come while another call waits for a
    request slot (one here, taken by a held call), being opened all that time."""
    fewer_early_frames_than_late_chunks(monkeypatch)
    monkeypatch.setattr(mesh, "RELEASE_TIMEOUT", 0.0)
    monkeypatch.setattr(_conn, "MAX_CONCURRENT_REQUESTS", 1)
    go, held, release = trio.Event(), trio.Event(), trio.Event()

    async def late(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        await go.wait()
        for n in range(LATE_CHUNKS):
            yield n
        await trio.sleep_forever()  # its end comes at its deadline, after the test

    async def hold(payload: Any, ctx: RequestContext) -> None:
        held.set()
        await release.wait()

    async def one(payload: Any, ctx: RequestContext) -> AsyncIterator[str]:
        yield OPENED_CHUNK

    opened: list[str] = []
    async with served_to_a_caller(running, "late", late) as (server, caller, me):
        await server.serve("lan", "hold", hold)
        await server.serve("lan", "one", one)

        async def open_one() -> None:
            async with caller.rpc_call_stream("lan", me, "one") as chunks:
                opened.extend([chunk async for chunk in chunks])

        with trio.fail_after(REFUSED_CANCEL_WAIT), caller.events() as events:
            async with caller.rpc_call_stream("lan", me, "late") as left:
                pass  # left before any chunk: its cancel runs out of time
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller.rpc_call, "lan", me, "hold")  # the one slot
                await held.wait()
                nursery.start_soon(open_one)
                await trio.testing.wait_all_tasks_blocked()  # it waits for the slot
                go.set()
                await routed(events, left.request_id)
                release.set()
    assert opened == [OPENED_CHUNK]


def stream_event(request_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    """An event of the stream `request_id`, as the daemon sends it."""
    return {"kind": kind, "network": "lan", "request_id": request_id, **fields}


async def open_while_late_chunks_come(
    client: MeshClient, session: FakeConnection, answer: trio.Event
) -> list[Any]:
    """Open the stream `s2` (the fake daemon holds its answer until `answer` is set) while
    LATE_CHUNKS of the stream `s1`, given up, come; its chunks as read."""
    opened: list[Any] = []

    async def open_s2() -> None:
        async with client.rpc_call_stream("lan", "peer", "bulk") as chunks:
            opened.extend([chunk async for chunk in chunks])

    with client.events() as events:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_s2)
            await session.wait_op("rpc_call_stream", times=2)
            chunk = "rpc_call_stream_chunk"
            late = [stream_event("s1", chunk, payload=n) for n in range(LATE_CHUNKS)]
            mine = [
                stream_event("s2", chunk, payload=OPENED_CHUNK),
                stream_event("s2", "rpc_call_stream_end"),
            ]
            await session.send_together([*late, *mine])
            await routed(events, "s1")
            answer.set()
    return opened


@pytest.mark.parametrize("code", CANCEL_REFUSALS)
async def test_a_left_stream_whose_cancel_fails_has_its_late_chunks_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    fewer_early_frames_than_late_chunks(monkeypatch)
    async with fake_session(tmp_path) as (daemon, client, session):
        daemon.refused["rpc_cancel"] = code
        with trio.fail_after(REFUSED_CANCEL_WAIT):
            async with client.rpc_call_stream("lan", "peer", "bulk"):
                pass  # left before the daemon ended it: the cancel is refused on the way out
            daemon.answers["rpc_call_stream"] = {"request_id": "s2"}
            daemon.held["rpc_call_stream"] = answer = trio.Event()
            opened = await open_while_late_chunks_come(client, session, answer)
    assert (session.ops.count("rpc_cancel"), opened) == (1, [OPENED_CHUNK])


@pytest.mark.parametrize("code", CANCEL_REFUSALS)
async def test_a_stream_given_up_before_its_answer_whose_cancel_fails_has_its_chunks_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    fewer_early_frames_than_late_chunks(monkeypatch)
    async with fake_session(tmp_path) as (daemon, client, session):
        daemon.held["rpc_call_stream"] = first_answer = trio.Event()
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
            first_answer.set()  # names s1: the client cancels it, and the cancel is refused
            await session.wait_op("rpc_cancel")
            daemon.answers["rpc_call_stream"] = {"request_id": "s2"}
            daemon.held["rpc_call_stream"] = answer = trio.Event()
            opened = await open_while_late_chunks_come(client, session, answer)
    assert opened == [OPENED_CHUNK]
