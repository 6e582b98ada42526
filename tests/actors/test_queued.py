"""take_queued: a batch is what already waits on a channel, never more, never a wait.
hand_over: a send that has room takes no scheduler pass; one that has none waits for room;
a cancelled one sends nothing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.actors import hand_over, take_queued
from tests.support import steps_of


def test_it_takes_what_waits_oldest_first_up_to_the_limit() -> None:
    send, receive = trio.open_memory_channel[int](10)
    for n in range(5):
        send.send_nowait(n)
    assert take_queued(receive, 3) == [0, 1, 2]
    assert take_queued(receive, 3) == [3, 4]
    assert take_queued(receive, 3) == []  # empty: no wait


def test_a_closed_channel_gives_what_was_left_then_nothing() -> None:
    send, receive = trio.open_memory_channel[int](10)
    send.send_nowait(7)
    send.close()
    assert take_queued(receive, 5) == [7]
    assert take_queued(receive, 5) == []


async def test_a_hand_over_with_room_is_queued_at_once_without_a_schedule_point() -> None:
    send, receive = trio.open_memory_channel[int](1)
    assert await steps_of(hand_over(send, 1)) == 0  # no pass of the run loop
    assert receive.receive_nowait() == 1


async def test_a_cancelled_hand_over_sends_nothing() -> None:
    send, receive = trio.open_memory_channel[int](1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await hand_over(send, 1)
    assert scope.cancelled_caught
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_a_hand_over_to_a_full_channel_waits_for_room() -> None:
    send, receive = trio.open_memory_channel[int](1)
    send.send_nowait(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hand_over, send, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert receive.statistics().tasks_waiting_send == 1  # no room: it waits
        assert receive.receive_nowait() == 1
    assert receive.receive_nowait() == 2


async def test_a_hand_over_to_a_closed_channel_raises_as_send_does() -> None:
    send, _ = trio.open_memory_channel[int](1)
    send.close()
    with pytest.raises(trio.ClosedResourceError):
        await hand_over(send, 1)
