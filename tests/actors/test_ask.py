"""`ask`: answers, reported errors, deadlines and stopped actors; a settled ask's answer to
an asker cancelled once it asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import (
    Actor,
    ActorGone,
    AskTimeout,
    ChildSpec,
    Inbox,
    Node,
    Reply,
    RestartLimits,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    run_root,
)
from tests.actors.conftest import Journal, ProbeActor

SETTLING_CLEANUP_S = 5.0  # the settling asker's shutdown timeout: its cleanup budget
SETTLING_LIMITS = RestartLimits()  # the settling tree's unless a test sets its own


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


@attrs.define(eq=False)
class SettlingAsker(Actor):
    """Asks once (its first run) with `settle` and records what the ask returned or raised,
    whether a checkpoint after it was cancelled, and when that run ended."""

    kind: ClassVar[str] = "asker"
    inbox: Inbox[Double]
    outcomes: list[object] = attrs.field(factory=list)
    ended_at: float | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.ended_at is not None:
            await trio.sleep_forever()  # a restart: nothing more to ask
        try:
            answer = await self.inbox.ask(
                lambda r: Double(21, r), timeout=30, what="double", settle=True
            )
            self.outcomes.append(answer)
            await trio.lowlevel.checkpoint()
        except BaseException as exc:
            self.outcomes.append(type(exc))
            raise
        finally:
            self.ended_at = trio.current_time()


def _settling_tree(
    inbox: Inbox[Double], limits: RestartLimits = SETTLING_LIMITS
) -> tuple[Supervisor, ProbeActor, SettlingAsker]:
    """A supervisor of a SettlingAsker asking `inbox` and, before it, a sibling whose crash
    restarts the asker (`rest_for_one`) or, past `limits`, escalates."""
    asker = SettlingAsker(inbox)
    first = ProbeActor("first", Journal())
    children = [
        ChildSpec("first", first),
        ChildSpec("asker", asker, shutdown_timeout=SETTLING_CLEANUP_S),
    ]
    supervisor = Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=limits)
    return supervisor, first, asker


async def _stop_once_asked(
    answer: Callable[[Reply[int]], None], after: float, *, restart: bool = False
) -> SettlingAsker:
    """Run a SettlingAsker under a supervisor, stop it once its request is sent (for good, or
    to `restart` it: the sibling before it crashes), then (`after` seconds on) answer it with
    `answer`; returns the asker once the tree has stopped."""
    inbox: Inbox[Double] = Inbox(capacity=4)
    supervisor, first, asker = _settling_tree(inbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, supervisor, Node(name="root", kind="supervisor"))
        request = await inbox.receiver.receive()
        if restart:
            await first.inbox.send("crash")
        else:
            nursery.cancel_scope.cancel()  # the tree stops: its children for good
        with trio.CancelScope(shield=True):
            await trio.sleep(after)
            answer(request.reply)
        nursery.cancel_scope.cancel()
    return asker


async def test_a_settled_ask_stopped_once_sent_returns_the_answer_then_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    began = trio.current_time()
    asker = await _stop_once_asked(lambda reply: reply.ok(42), SETTLING_CLEANUP_S / 2)
    assert asker.outcomes == [42, trio.Cancelled]
    assert asker.ended_at == pytest.approx(began + SETTLING_CLEANUP_S / 2)


async def test_a_settled_ask_waits_no_longer_than_the_askers_cleanup_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    began = trio.current_time()
    asker = await _stop_once_asked(lambda reply: reply.ok(42), SETTLING_CLEANUP_S * 2)
    assert asker.outcomes == [trio.Cancelled]
    assert asker.ended_at == pytest.approx(began + SETTLING_CLEANUP_S)


async def test_a_settled_ask_dropped_after_its_stop_is_cancelled_not_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    began = trio.current_time()
    asker = await _stop_once_asked(lambda reply: reply.drop(), 1)
    assert asker.outcomes == [trio.Cancelled]
    assert asker.ended_at == pytest.approx(began + 1)


async def test_a_settled_ask_stopped_to_restart_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restart's wait for an answer would hold it back (for good when the asked actor is
    the one that crashed); the next run redoes what the last one held."""
    began = trio.current_time()
    asker = await _stop_once_asked(lambda reply: reply.ok(42), 1, restart=True)
    assert asker.outcomes == [trio.Cancelled]
    assert asker.ended_at == pytest.approx(began)


async def test_a_settled_ask_stopped_by_an_escalation_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A supervisor that gives up stops its children to restart (its parent restarts it, or
    the service manager a fresh daemon): a wait would hold the escalation back by the asker's
    cleanup budget, for an actor that may be the one whose crashes passed the limit."""
    inbox: Inbox[Double] = Inbox(capacity=4)
    supervisor, first, asker = _settling_tree(inbox, RestartLimits(intensity=0))
    held: list[Double] = []  # the request, never answered

    async def crash_once_asked() -> None:
        held.append(await inbox.receiver.receive())
        await first.inbox.send("crash")

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_once_asked)
        with pytest.raises(SupervisorEscalation):
            await run_root(supervisor, Node(name="root", kind="supervisor"))
    assert asker.outcomes == [trio.Cancelled]
    assert asker.ended_at == pytest.approx(began)


async def test_a_settled_ask_of_no_actor_is_cancelled_as_any(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An asker with no actor of its own (a test's task, a helper's) is not stopped for good:
    its cancel ends the ask as without `settle`."""
    inbox: Inbox[Double] = Inbox(capacity=4)
    with trio.move_on_after(1) as waiting:
        await inbox.ask(lambda r: Double(1, r), timeout=30, what="double", settle=True)
    assert waiting.cancelled_caught
