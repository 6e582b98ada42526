"""The client's own routing, without the daemon ops it serves (they land on other branches):
handler outcomes become the right answers, and stream events reach their iterator in order."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.client import ClientError, RequestContext
from meshactors.client._serving import Serving
from meshactors.client._streams import EARLY_FRAMES, STREAM_BUFFER, StreamTable
from tests.client.fakedaemon import fake_session

UNTIMED = (math.inf, math.inf)  # a stream's deadline and allowed seconds: these end on their own


@attrs.define
class Answers:
    """Records the answering ops a Serving table makes, as the daemon would receive them."""

    sent: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    async def rpc_respond(
        self,
        request_id: str,
        payload: Any = None,
        *,
        data: bytes | None = None,
        error: str | None = None,
    ) -> Any:
        content = {"payload": payload} if data is None else {"data": data}
        self.sent.append(("rpc_respond", {"request_id": request_id} | content | {"error": error}))

    async def rpc_stream_chunk(
        self, request_id: str, payload: Any = None, *, data: bytes | None = None
    ) -> Any:
        content = {"payload": payload} if data is None else {"data": data}
        self.sent.append(("rpc_stream_chunk", {"request_id": request_id} | content))

    async def rpc_stream_end(self, request_id: str, *, error: str | None = None) -> Any:
        self.sent.append(("rpc_stream_end", {"request_id": request_id, "error": error}))


def inbound(method: str, payload: Any, request_id: str = "r1") -> dict[str, Any]:
    return {
        "kind": "rpc_inbound",
        "network": "lan",
        "from": "peer-a",
        "request_id": request_id,
        "method": method,
        "payload": payload,
        "streaming": False,
    }


async def serve_one(serving: Serving, frame: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        serving.inbound(frame, nursery)


async def test_a_handler_return_value_answers_and_sees_its_context() -> None:
    answers = Answers()
    serving = Serving(answers)

    async def echo(payload: Any, ctx: RequestContext) -> Any:
        return {"got": payload, "from": ctx.peer, "method": ctx.method}

    serving.handlers[("lan", "echo")] = echo
    await serve_one(serving, inbound("echo", 7))
    payload = {"got": 7, "from": "peer-a", "method": "echo"}
    assert answers.sent == [
        ("rpc_respond", {"request_id": "r1", "payload": payload, "error": None})
    ]


async def test_a_handler_exception_answers_its_message_as_the_error() -> None:
    answers = Answers()
    serving = Serving(answers)

    async def broken(payload: Any, ctx: RequestContext) -> Any:
        raise ValueError("bad input")

    serving.handlers[("lan", "broken")] = broken
    await serve_one(serving, inbound("broken", None))
    await serve_one(serving, inbound("unknown", None, "r2"))
    assert answers.sent[0][1]["error"] == "bad input"
    assert "no local handler" in answers.sent[1][1]["error"]
    assert serving.running == 0


async def test_an_async_generator_streams_chunks_then_ends_with_its_error() -> None:
    answers = Answers()
    serving = Serving(answers)

    async def count(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        for n in range(payload):
            yield n
        raise RuntimeError("ran dry")

    serving.handlers[("lan", "count")] = count
    await serve_one(serving, inbound("count", 3))
    assert [op for op, _ in answers.sent] == ["rpc_stream_chunk"] * 3 + ["rpc_stream_end"]
    assert [fields.get("payload") for _, fields in answers.sent[:3]] == [0, 1, 2]
    assert answers.sent[-1][1]["error"] == "ran dry"


def chunk(request_id: str, payload: Any) -> dict[str, Any]:
    return {"kind": "rpc_call_stream_chunk", "request_id": request_id, "payload": payload}


def end(request_id: str, error: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"kind": "rpc_call_stream_end", "request_id": request_id}
    return frame | ({"error": error} if error is not None else {})


async def test_chunks_that_beat_the_answer_are_kept_for_their_stream() -> None:
    table = StreamTable(opening=1)
    table.deliver(chunk("s1", "a"))  # before the rpc_call_stream answer was handled
    table.deliver(chunk("other", "x"))
    stream = table.open("s1", *UNTIMED)
    table.done_opening()
    table.deliver(chunk("s1", "b"))
    table.deliver(end("s1"))
    assert [item async for item in stream] == ["a", "b"]
    assert stream.daemon_done
    assert not table.streams


async def test_a_stream_end_with_an_error_raises_it_after_the_chunks() -> None:
    table = StreamTable()
    table.opening = 1
    stream = table.open("s1", *UNTIMED)
    table.done_opening()
    table.deliver(chunk("s1", 1))
    table.deliver(end("s1", {"code": "handler_gone", "message": "the server left"}))
    assert await stream.__anext__() == 1
    with pytest.raises(ClientError) as failure:
        await stream.__anext__()
    assert failure.value.code == "handler_gone"


async def test_a_reader_that_falls_behind_gets_a_lagged_error_not_a_gap() -> None:
    table = StreamTable(opening=1)
    stream = table.open("s1", *UNTIMED)
    for n in range(STREAM_BUFFER + 1):
        table.deliver(chunk("s1", n))
    received = [await stream.__anext__() for _ in range(STREAM_BUFFER)]
    assert received == list(range(STREAM_BUFFER))
    with pytest.raises(ClientError) as failure:
        await stream.__anext__()
    assert failure.value.code == "lagged"
    assert not stream.daemon_done  # ended here only: leaving its block cancels it at the daemon


async def test_a_binary_call_not_base64_is_answered_with_an_error() -> None:
    answers = Answers()
    serving = Serving(answers)

    async def echo(payload: Any, ctx: RequestContext) -> Any:
        return payload

    serving.handlers[("lan", "echo")] = echo
    frame = {k: v for k, v in inbound("echo", None).items() if k != "payload"}
    await serve_one(serving, frame | {"payload_b64": "not base64!"})
    await serve_one(serving, frame | {"payload_b64": "aGk=", "request_id": "r2"})
    assert "not base64" in answers.sent[0][1]["error"]
    assert answers.sent[1] == ("rpc_respond", {"request_id": "r2", "data": b"hi", "error": None})


async def test_a_binary_chunk_not_base64_ends_its_stream() -> None:
    table = StreamTable(opening=1)
    stream = table.open("s1", *UNTIMED)
    table.deliver({"kind": "rpc_call_stream_chunk", "request_id": "s1", "payload_b64": "aGk="})
    table.deliver({"kind": "rpc_call_stream_chunk", "request_id": "s1", "payload_b64": "no!"})
    assert await stream.__anext__() == b"hi"
    with pytest.raises(ClientError) as failure:
        await stream.__anext__()
    assert failure.value.code == "bad_payload"


async def test_a_stream_opened_across_a_lag_of_the_client_ends_lagged() -> None:
    table = StreamTable(opening=1)
    table.deliver(chunk("s1", "a"))  # arrived before the answer, then the lag: maybe a hole
    table.lagged(ClientError("lagged", "the client dropped 3 events of its connection"))
    table.deliver(chunk("s1", "c"))  # after the hole: never delivered as if it followed "a"
    stream = table.open("s1", *UNTIMED)
    table.done_opening()
    with pytest.raises(ClientError) as failure:
        await stream.__anext__()
    assert failure.value.code == "lagged"
    assert not stream.daemon_done  # ended here only: leaving its block cancels it at the daemon
    table.opening = 1  # the lag is over: a stream opened now is not failed for it
    later = table.open("s2", *UNTIMED)
    table.done_opening()
    table.deliver(chunk("s2", "d"))
    table.deliver(end("s2"))
    assert [item async for item in later] == ["d"]


async def test_a_stream_whose_early_events_overflowed_ends_lagged_not_short() -> None:
    """Past EARLY_FRAMES events held before their call's answer, a chunk or the end of a
    stream being opened would be lost unseen: each stream opened until none is ends `lagged`."""
    table = StreamTable(opening=2)
    for n in range(EARLY_FRAMES):
        table.deliver(chunk("s1", n))
    table.deliver(end("s1"))  # one past the cap: without the fix, dropped and never seen
    stream = table.open("s1", *UNTIMED)
    table.done_opening()
    later = table.open("s2", *UNTIMED)  # opening meanwhile: its first events may be lost too
    table.done_opening()
    for opened in (stream, later):
        with pytest.raises(ClientError) as failure:
            await opened.__anext__()
        assert failure.value.code == "lagged"
        assert f"more than {EARLY_FRAMES} stream events" in failure.value.message
        assert not opened.daemon_done  # ended here only: leaving its block cancels it


async def test_a_left_streams_late_events_never_end_a_stream_being_opened_lagged() -> None:
    """s1's caller left its block before the daemon ended s1: what the daemon still sends of
    it, however much, is dropped, not held as early events while s2's call is answered (past
    EARLY_FRAMES they would end s2 `lagged`), and s2 gets all of its own."""
    table = StreamTable(opening=1)
    left = table.open("s1", *UNTIMED)
    table.done_opening()
    table.forget(left)  # its caller left: the cancel is on its way to the daemon
    table.opening = 1  # s2's call is being answered
    table.deliver(chunk("s2", "a"))
    for n in range(EARLY_FRAMES):
        table.deliver(chunk("s1", n))
    table.deliver(end("s1"))
    table.deliver(chunk("s2", "b"))
    stream = table.open("s2", *UNTIMED)
    table.done_opening()
    table.deliver(end("s2"))
    assert [item async for item in stream] == ["a", "b"]


async def test_a_stream_given_up_before_its_answer_never_ends_a_stream_being_opened_lagged(
    tmp_path: Path,
) -> None:
    """s1's call was given up before its answer: once that answer names s1 (and its cancel is
    sent), what the daemon still sends of s1, however much, is dropped, not held as early
    events while s2's call is answered, and s2 gets all of its own."""
    async with fake_session(tmp_path) as (daemon, client, session):
        daemon.held["rpc_call_stream"] = first_answer = trio.Event()
        given_up = trio.CancelScope()
        got: list[Any] = []

        async def give_up_stream_1() -> None:
            with given_up:
                async with client.rpc_call_stream("lan", "peer", "bulk"):
                    pytest.fail("its answer was held until it was given up")

        async def read_stream_2() -> None:
            async with client.rpc_call_stream("lan", "peer", "bulk") as stream:
                got.extend([item async for item in stream])

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(give_up_stream_1)
                await session.wait_op("rpc_call_stream")
                given_up.cancel()
            daemon.held["rpc_call_stream"] = second_answer = trio.Event()
            first_answer.set()  # answered s1 ("s1"): the client cancels it
            await session.wait_op("rpc_cancel")
            daemon.answers["rpc_call_stream"] = {"request_id": "s2"}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_stream_2)
                await session.wait_op("rpc_call_stream", 2)
                late = [chunk("s1", n) for n in range(EARLY_FRAMES + 1)]
                with client.events() as events:
                    await session.send_together([*late, chunk("s2", "a")])
                    async for event in events:  # all routed while s2's answer is held
                        if event == chunk("s2", "a"):
                            break
                second_answer.set()
                await session.send_together([chunk("s2", "b"), end("s1"), end("s2")])
        assert got == ["a", "b"]
