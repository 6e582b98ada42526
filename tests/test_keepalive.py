"""The keepalive: a ping counts as unanswered after a whole deadline of silence, or once its
ceiling passed without a pong whatever else was heard."""

import pytest
import trio
import trio.testing

from meshactors.keepalive import PingOutcome, await_pong

DEADLINE = 20.0
CEILING = 60.0


class Peer:
    """A ping whose pong comes when the test says; `progress` is what else was heard."""

    def __init__(self) -> None:
        self.pong = trio.Event()
        self.progress = 0
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        await self.pong.wait()

    async def keepalive(self) -> PingOutcome:
        """One keepalive ping to this peer, under the test's deadline and ceiling."""
        return await await_pong(self.ping, lambda: self.progress, DEADLINE, CEILING)

    async def heard_every(self, seconds: float, times: int) -> None:
        """Move `progress` every `seconds`, `times` times."""
        for _ in range(times):
            await trio.sleep(seconds)
            self.progress += 1


async def test_an_answered_ping_is_answered(autojump_clock: trio.testing.MockClock) -> None:
    peer = Peer()
    peer.pong.set()
    assert await peer.keepalive() is PingOutcome.ANSWERED
    assert trio.current_time() == 0


async def test_a_ping_unanswered_through_a_silent_deadline_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    assert await peer.keepalive() is PingOutcome.SILENT
    assert trio.current_time() == DEADLINE


async def test_a_busy_peer_is_waited_for_while_it_is_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Heard every few seconds for 55 s, more than two deadlines, then the pong (queued behind
    it all) arrives inside the ceiling."""
    peer = Peer()
    outcomes: list[PingOutcome] = []
    async with trio.open_nursery() as nursery:

        async def wait_for_it() -> None:
            outcomes.append(await peer.keepalive())

        nursery.start_soon(wait_for_it)
        await peer.heard_every(5, 11)
        assert outcomes == []
        peer.pong.set()
    assert outcomes == [PingOutcome.ANSWERED]
    assert peer.pings == 1  # one ping, never cancelled and sent again


async def test_a_ping_never_answered_ends_at_the_ceiling_however_much_moves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Writes to a stopped peer land in its socket buffer: progress that moves all the time
    without a pong does not keep the connection past the ceiling."""
    peer = Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.heard_every, 1, 1000)
        assert await peer.keepalive() is PingOutcome.LATE
        assert trio.current_time() == CEILING
        nursery.cancel_scope.cancel()


async def test_a_peer_heard_then_silent_is_given_up_one_deadline_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.heard_every, 5, 2)
        assert await peer.keepalive() is PingOutcome.SILENT
    # heard until 10 s; the window from 0 to 20 s moved, the next one (20-40 s) stood still,
    # well before the ceiling
    assert trio.current_time() == 40


async def test_the_pings_own_error_reaches_the_caller_bare() -> None:
    async def closed() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        await await_pong(closed, lambda: 0, DEADLINE, CEILING)
