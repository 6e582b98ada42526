"""`Inbox`: messages reach only the owning actor's task, in order, and a full inbox makes the
sender wait instead of running anything of the owner's."""

from __future__ import annotations

import trio
import trio.testing

from meshactors.actors import Inbox

WAIT_S = 5.0


async def test_messages_are_handled_in_the_owners_task_in_order_even_when_it_idles() -> None:
    inbox: Inbox[int] = Inbox(capacity=4)
    handled: list[tuple[int, trio.lowlevel.Task]] = []
    done = trio.Event()

    async def owner() -> None:
        async for message in inbox.receiver:
            handled.append((message, trio.lowlevel.current_task()))
            if message == 2:
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
        await trio.testing.wait_all_tasks_blocked()  # the owner waits with nothing queued
        with trio.fail_after(WAIT_S):
            for message in range(3):
                await inbox.send(message)
            await done.wait()
        nursery.cancel_scope.cancel()
    assert [message for message, _ in handled] == [0, 1, 2]
    assert trio.lowlevel.current_task() not in {task for _, task in handled}
    assert len({task for _, task in handled}) == 1


async def test_a_full_inbox_makes_the_sender_wait() -> None:
    inbox: Inbox[int] = Inbox(capacity=1)
    sent = trio.Event()

    async def sender() -> None:
        await inbox.send(1)
        await inbox.send(2)  # the inbox holds one: this waits for the owner
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert inbox.statistics().current_buffer_used == 1
        with trio.fail_after(WAIT_S):
            assert await inbox.receiver.receive() == 1
            await sent.wait()
        assert await inbox.receiver.receive() == 2


def test_an_offer_to_a_full_inbox_is_refused_and_counted_there() -> None:
    inbox: Inbox[int] = Inbox(capacity=1)
    assert inbox.offer(1)
    assert not inbox.offer(2)
    assert inbox.refused == 1
    assert inbox.receiver.receive_nowait() == 1
