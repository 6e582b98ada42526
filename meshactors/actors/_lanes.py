"""An inbox in two lanes that take turns: a request (an ask or a tell) never waits behind
more than one message of traffic.

An actor fed by a busy link (a network's core) can hold a thousand queued batches; an op's
request behind them would wait out the backlog, and time out under a storm. Taking turns,
not strict priority, keeps a flood of requests (a client's channel sends) from starving the
traffic in turn. Each lane is a bounded memory channel; a one-slot doorbell channel wakes the
one owner when either gets a message, so no wake-up is lost and nothing but memory channels
joins the tasks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

from meshactors.actors._actor import DEFAULT_INBOX_CAPACITY
from meshactors.actors._ask import Reply, ask
from meshactors.actors._doorbell import Doorbell
from meshactors.actors._queued import hand_over

M = TypeVar("M")
T = TypeVar("T")

REQUEST_LANE_CAPACITY = 64  # asks and tells queued before their senders wait


@attrs.define(eq=False)
class LanedInbox(Generic[M]):
    """Traffic (`send`, waiting while its lane is full) and requests (`ask`, `tell_nowait`),
    read by one owner with `receive`, the lanes taking turns while both hold messages."""

    capacity: int = DEFAULT_INBOX_CAPACITY  # the traffic lane
    request_capacity: int = REQUEST_LANE_CAPACITY
    _traffic: trio.MemorySendChannel[M] = attrs.field(init=False)
    _traffic_out: trio.MemoryReceiveChannel[M] = attrs.field(init=False)
    _requests: trio.MemorySendChannel[M] = attrs.field(init=False)
    _requests_out: trio.MemoryReceiveChannel[M] = attrs.field(init=False)
    _bell: Doorbell = attrs.field(init=False, factory=Doorbell)
    _traffic_next: bool = attrs.field(init=False, default=False)  # a request was just read
    _ringing: _RingingLane[M] = attrs.field(init=False)  # what `ask` sends to: made once
    _turns: tuple[list[trio.MemoryReceiveChannel[M]], list[trio.MemoryReceiveChannel[M]]] = (
        attrs.field(init=False)
    )

    def __attrs_post_init__(self) -> None:
        self._traffic, self._traffic_out = trio.open_memory_channel[M](self.capacity)
        self._requests, self._requests_out = trio.open_memory_channel[M](self.request_capacity)
        self._ringing = _RingingLane(self._requests, self._bell.ring)
        # the lanes in the order `receive` tries them, by `_traffic_next`: requests first or not
        self._turns = (
            [self._requests_out, self._traffic_out],
            [self._traffic_out, self._requests_out],
        )

    async def send(self, message: M) -> None:
        """Queue traffic for the owner, waiting only while its lane is full (`hand_over`)."""
        await hand_over(self._traffic, message)
        self._bell.ring()

    async def ask(
        self, build: Callable[[Reply[T]], M], *, timeout: float, what: str, shield: bool = False
    ) -> T:
        """Ask the owner (ahead of queued traffic) and wait for its answer under a deadline
        (`shield`: see `ask`)."""
        return await ask(self._ringing, build, timeout=timeout, what=what, shield=shield)

    def tell_nowait(self, message: M) -> None:
        """Queue a request without waiting; trio.WouldBlock when its lane is full."""
        self._requests.send_nowait(message)
        self._bell.ring()

    async def receive(self) -> M:
        """The next message from the lane whose turn it is, else from the other, else wait."""
        while True:
            for lane in self._turns[self._traffic_next]:
                try:
                    message = lane.receive_nowait()
                except trio.WouldBlock:
                    continue
                self._traffic_next = lane is self._requests_out
                return message
            await self._bell.wait()

    def close(self) -> list[M]:
        """For an owner stopped for good: take out what is queued, and what senders wait to
        queue (to be dropped, and its askers told), and close both lanes, so every later
        sender hears so at once (trio.BrokenResourceError: an ask raises ActorGone)."""
        left: list[M] = []
        for lane in (self._requests_out, self._traffic_out):
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):  # or closed
                while True:
                    left.append(lane.receive_nowait())
            lane.close()
        return left

    @property
    def closed(self) -> bool:
        """Whether `close` ran: its owner is stopped for good."""
        return self._requests_out.statistics().open_receive_channels == 0

    def waiting(self) -> int:
        """Messages queued in both lanes."""
        lanes = (self._requests_out, self._traffic_out)
        return sum(lane.statistics().current_buffer_used for lane in lanes)

    def statistics(self) -> trio.MemoryChannelStatistics:
        """The traffic lane's use, for the inspect tree (requests are few and short)."""
        return self._traffic_out.statistics()


@attrs.frozen
class _RingingLane(Generic[M]):
    """The request lane as `ask` sends to it: each message rings the doorbell."""

    lane: trio.MemorySendChannel[M]
    ring: Callable[[], None]

    async def send(self, message: M) -> None:
        await hand_over(self.lane, message)  # the asker's wait for the answer checkpoints
        self.ring()
