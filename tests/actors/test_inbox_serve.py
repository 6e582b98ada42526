"""`Inbox.put` and `Inbox.serve`: a message put while the reader waits idle is handled in the
sender's task; otherwise it queues, order holds, and a handler's failure is the reader's."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.actors import Inbox

WAIT_S = 5.0


class Handled:
    """Records each message with the task that handled it; `gate` holds a handler until set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, trio.lowlevel.Task]] = []
        self.gate: trio.Event | None = None

    async def handle(self, message: str) -> None:
        if message == "boom":
            raise ValueError("boom")
        if message == "hold" and self.gate is not None:
            await self.gate.wait()
        self.seen.append((message, trio.lowlevel.current_task()))


async def idle_reader(nursery: trio.Nursery, handled: Handled) -> Inbox[str]:
    """An inbox whose reader serves `handled` and is now waiting for a message."""
    inbox: Inbox[str] = Inbox(capacity=4)
    nursery.start_soon(inbox.serve, handled.handle)
    await trio.testing.wait_all_tasks_blocked()
    return inbox


async def test_a_message_put_while_the_reader_idles_is_handled_in_the_senders_task() -> None:
    handled = Handled()
    async with trio.open_nursery() as nursery:
        inbox = await idle_reader(nursery, handled)
        with trio.CancelScope() as scope:
            scope.cancel()  # a queue hand-off would checkpoint and raise Cancelled here
            await inbox.put("now")
        assert not scope.cancelled_caught
        assert handled.seen == [("now", trio.lowlevel.current_task())]
        nursery.cancel_scope.cancel()


async def test_messages_put_while_the_reader_is_busy_queue_and_keep_their_order() -> None:
    inbox: Inbox[str] = Inbox(capacity=4)
    handled = Handled()
    handled.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.serve, handled.handle)
        await inbox.sender.send("hold")  # the reader takes it and waits on the gate
        await trio.testing.wait_all_tasks_blocked()
        await inbox.put("second")
        await inbox.put("third")
        assert inbox.statistics().current_buffer_used == 2
        handled.gate.set()
        with trio.fail_after(WAIT_S):
            while len(handled.seen) < 3:
                await trio.testing.wait_all_tasks_blocked()
        assert [message for message, _ in handled.seen] == ["hold", "second", "third"]
        assert {task for _, task in handled.seen} != {trio.lowlevel.current_task()}
        nursery.cancel_scope.cancel()


async def test_a_message_queued_before_an_inline_one_is_never_overtaken() -> None:
    handled = Handled()
    async with trio.open_nursery() as nursery:
        inbox = await idle_reader(nursery, handled)
        inbox.sender.send_nowait("first")  # handed to the waiting reader, not yet run
        await inbox.put("second")  # so this one queues behind it
        with trio.fail_after(WAIT_S):
            while len(handled.seen) < 2:
                await trio.testing.wait_all_tasks_blocked()
        assert [message for message, _ in handled.seen] == ["first", "second"]
        nursery.cancel_scope.cancel()


async def test_a_failure_in_the_senders_task_is_raised_by_serve_not_put() -> None:
    inbox: Inbox[str] = Inbox(capacity=4)
    handled = Handled()
    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox.serve, handled.handle)
            await trio.testing.wait_all_tasks_blocked()
            await inbox.put("boom")  # returns: the failure is the reader's
            handled.seen.append(("put returned", trio.lowlevel.current_task()))
    (failure,) = raised.value.exceptions
    assert isinstance(failure, ValueError) and str(failure) == "boom"
    assert [message for message, _ in handled.seen] == ["put returned"]


async def test_a_message_the_reader_took_survives_a_failing_inline_handler() -> None:
    """m1 reaches the reader while a sender runs the handler for m0, which then fails: serve
    raises the failure, and the restarted reader handles m1."""
    inbox: Inbox[str] = Inbox(capacity=4)
    seen: list[str] = []
    gate = trio.Event()

    async def handle(message: str) -> None:
        if message == "m0":
            await gate.wait()
            raise ValueError("m0 failed")
        seen.append(message)

    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox.serve, handle)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(inbox.put, "m0")  # handled in that task, waiting on the gate
            await trio.testing.wait_all_tasks_blocked()
            await inbox.sender.send("m1")  # handed straight to the waiting reader
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    (failure,) = raised.value.exceptions
    assert str(failure) == "m0 failed"
    async with trio.open_nursery() as nursery:  # the restarted actor
        nursery.start_soon(inbox.serve, handle)
        with trio.fail_after(WAIT_S):
            while not seen:
                await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert seen == ["m1"]


async def test_a_stopping_reader_waits_for_the_handler_a_sender_runs() -> None:
    handled = Handled()
    handled.gate = trio.Event()
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as actor:
            inbox = await idle_reader(actor, handled)
            outer.start_soon(inbox.put, "hold")
            await trio.testing.wait_all_tasks_blocked()
            actor.cancel_scope.cancel()
            outer.start_soon(_open_gate_soon, handled.gate)
        # the reader's task ends only once the handler run in the sender's task is done
        assert [message for message, _ in handled.seen] == ["hold"]


async def _open_gate_soon(gate: trio.Event) -> None:
    await trio.testing.wait_all_tasks_blocked()
    gate.set()
