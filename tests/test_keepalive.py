"""The keepalive: a ping counts as unanswered only after a whole deadline of silence."""

import pytest
import trio
import trio.testing

from meshactors.keepalive import answered_or_heard

DEADLINE = 20.0


class Peer:
    """A ping whose pong comes when the test says; `progress` is what else was heard."""

    def __init__(self) -> None:
        self.pong = trio.Event()
        self.progress = 0
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        await self.pong.wait()


async def test_an_answered_ping_is_answered(autojump_clock: trio.testing.MockClock) -> None:
    peer = Peer()
    peer.pong.set()
    assert await answered_or_heard(peer.ping, lambda: peer.progress, DEADLINE)
    assert trio.current_time() == 0


async def test_a_ping_unanswered_through_a_silent_deadline_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    assert not await answered_or_heard(peer.ping, lambda: peer.progress, DEADLINE)
    assert trio.current_time() == DEADLINE


async def test_a_busy_peer_is_waited_for_while_it_is_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Heard every few seconds for 100 s, then the pong (queued behind it all) arrives."""
    peer = Peer()
    answered: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def wait_for_it() -> None:
            answered.append(await answered_or_heard(peer.ping, lambda: peer.progress, DEADLINE))

        nursery.start_soon(wait_for_it)
        for _ in range(20):
            await trio.sleep(5)
            peer.progress += 1
        assert answered == []
        peer.pong.set()
    assert answered == [True]
    assert peer.pings == 1  # one ping, never cancelled and sent again


async def test_a_peer_heard_then_silent_is_given_up_one_deadline_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:

        async def heard_for_a_while() -> None:
            for _ in range(10):
                await trio.sleep(5)
                peer.progress += 1

        nursery.start_soon(heard_for_a_while)
        assert not await answered_or_heard(peer.ping, lambda: peer.progress, DEADLINE)
    # heard until 50 s; the window from 40 to 60 s moved, the next one (60-80 s) stood still
    assert trio.current_time() == 80


async def test_the_pings_own_error_reaches_the_caller_bare() -> None:
    async def closed() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        await answered_or_heard(closed, lambda: 0, DEADLINE)
