"""`ask`: answers, reported errors, deadlines and stopped actors."""

from __future__ import annotations

import attrs
import pytest
import trio

from meshactors.actors import ActorGone, AskTimeout, Inbox, Reply


@attrs.frozen
class Double:
    value: int
    reply: Reply[int]


async def serve_doubles(inbox: Inbox[Double]) -> None:
    async for request in inbox.receiver:
        if request.value < 0:
            request.reply.fail(ValueError("negative"))
        else:
            request.reply.ok(request.value * 2)


async def test_ask_returns_the_answer() -> None:
    inbox: Inbox[Double] = Inbox(capacity=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_doubles, inbox)
        assert await inbox.ask(lambda r: Double(21, r), timeout=1, what="double") == 42
        nursery.cancel_scope.cancel()


async def test_ask_raises_the_reported_error() -> None:
    inbox: Inbox[Double] = Inbox(capacity=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_doubles, inbox)
        with pytest.raises(ValueError, match="negative"):
            await inbox.ask(lambda r: Double(-1, r), timeout=1, what="double")
        nursery.cancel_scope.cancel()


async def test_ask_times_out_when_nobody_answers(autojump_clock: trio.testing.MockClock) -> None:
    inbox: Inbox[Double] = Inbox(capacity=4)
    began = trio.current_time()
    with pytest.raises(AskTimeout, match=r"double: no answer within 2\.5s"):
        await inbox.ask(lambda r: Double(1, r), timeout=2.5, what="double")
    assert trio.current_time() - began == pytest.approx(2.5)


async def test_ask_deadline_covers_a_full_inbox(autojump_clock: trio.testing.MockClock) -> None:
    inbox: Inbox[Double] = Inbox(capacity=0)
    with pytest.raises(AskTimeout):
        await inbox.ask(lambda r: Double(1, r), timeout=1, what="double")


async def test_ask_a_stopped_actor_fails_at_once() -> None:
    inbox: Inbox[Double] = Inbox(capacity=4)
    inbox.receiver.close()
    with pytest.raises(ActorGone, match="double: the actor is not running"):
        await inbox.ask(lambda r: Double(1, r), timeout=10, what="double")


async def test_late_answer_is_harmless(autojump_clock: trio.testing.MockClock) -> None:
    inbox: Inbox[Double] = Inbox(capacity=4)
    with pytest.raises(AskTimeout):
        await inbox.ask(lambda r: Double(1, r), timeout=1, what="double")
    late = inbox.receiver.receive_nowait()
    late.reply.ok(2)  # the asker is gone: no error, nothing blocks
    late.reply.ok(3)  # answering twice is harmless too


async def test_a_request_dropped_mid_way_fails_the_asker_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox: Inbox[Double] = Inbox(capacity=4)

    async def stops_mid_request() -> None:
        request = await inbox.receiver.receive()
        request.reply.drop()  # what an actor cancelled mid-request does

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stops_mid_request)
        began = trio.current_time()
        with pytest.raises(ActorGone):
            await inbox.ask(lambda r: Double(1, r), timeout=10, what="double")
        assert trio.current_time() == began  # not after the deadline
