"""LanedInbox: requests and traffic take turns, and the owner wakes for either."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.actors import ActorGone, LanedInbox, Reply

Message = str | tuple[str, Reply[str]]


async def read(inbox: LanedInbox[Message], count: int) -> list[str]:
    """What the owner reads next, `count` messages (a request as its name)."""
    read: list[str] = []
    for _ in range(count):
        message = await inbox.receive()
        read.append(message if isinstance(message, str) else message[0])
    return read


async def test_a_request_waits_behind_at_most_one_message_of_traffic() -> None:
    inbox: LanedInbox[Message] = LanedInbox(capacity=100)
    for n in range(50):
        await inbox.send(f"t{n}")
    inbox.tell_nowait("request")
    assert await read(inbox, 3) == ["request", "t0", "t1"]
    assert inbox.waiting() == 48


async def test_a_flood_of_requests_does_not_starve_the_traffic() -> None:
    inbox: LanedInbox[Message] = LanedInbox(capacity=10, request_capacity=10)
    for n in range(3):
        await inbox.send(f"t{n}")
    for n in range(6):
        inbox.tell_nowait(f"r{n}")
    assert await read(inbox, 9) == ["r0", "t0", "r1", "t1", "r2", "t2", "r3", "r4", "r5"]


async def test_the_owner_wakes_for_a_message_in_either_lane() -> None:
    inbox: LanedInbox[Message] = LanedInbox()
    got: list[str] = []
    async with trio.open_nursery() as nursery:

        async def owner() -> None:
            got.extend(await read(inbox, 2))

        nursery.start_soon(owner)
        await trio.testing.wait_all_tasks_blocked()
        await inbox.send("traffic")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] or got == ["traffic"]
        inbox.tell_nowait("request")
    assert got == ["traffic", "request"]


async def test_an_ask_is_answered_ahead_of_queued_traffic() -> None:
    inbox: LanedInbox[Message] = LanedInbox(capacity=100)
    for n in range(50):
        await inbox.send(f"t{n}")
    seen: list[str] = []
    async with trio.open_nursery() as nursery:

        async def owner() -> None:
            while True:
                message = await inbox.receive()
                if isinstance(message, str):
                    seen.append(message)
                else:
                    message[1].ok(f"after {len(seen)} of the traffic")

        nursery.start_soon(owner)
        answer = await inbox.ask(lambda reply: ("ask", reply), timeout=5, what="ask")
        assert answer == "after 0 of the traffic"
        nursery.cancel_scope.cancel()


def test_a_tell_to_a_full_request_lane_would_block() -> None:
    inbox: LanedInbox[Message] = LanedInbox(request_capacity=1)
    inbox.tell_nowait("one")
    with pytest.raises(trio.WouldBlock):
        inbox.tell_nowait("two")


async def test_closing_hands_back_what_is_queued_and_refuses_every_later_sender() -> None:
    inbox: LanedInbox[Message] = LanedInbox(capacity=1, request_capacity=1)
    await inbox.send("t0")
    inbox.tell_nowait("r0")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.send, "t1")  # waits: the traffic lane is full
        await trio.testing.wait_all_tasks_blocked()
        assert inbox.close() == ["r0", "t0", "t1"]  # the waiting send is taken too
    with pytest.raises(ActorGone):
        await inbox.ask(lambda reply: ("ask", reply), timeout=5, what="ask")
    with pytest.raises(trio.BrokenResourceError):
        inbox.tell_nowait("r1")
    with pytest.raises(trio.BrokenResourceError):
        await inbox.send("t2")
    assert inbox.close() == []
