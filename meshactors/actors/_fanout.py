"""Fan-out to many subscribers without ever blocking the publisher.

Each subscriber owns a channel filled with `send_nowait`, bounded in items and, when given a
size for its items, in bytes. A subscriber that falls behind loses the newest items and is told
how many with a `Lagged` marker where they would have been, so memory stays bounded, a slow
reader never stalls the pump or the other subscribers, and it knows which items it got came
before the hole and which after. A reader leaves by closing its end; the publisher forgets it
when it next looks, so only the publisher's task ever touches the list of subscribers.
A `Subscriber` serves as one actor's inbox too (a channel pump's): items it may skip are
offered, and those it must not (a change of its readers) are sent, waiting for room.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import trio

T = TypeVar("T")

DEFAULT_SUBSCRIBER_CAPACITY = 1024  # items a subscriber may have unread before it lags


@attrs.frozen
class Lagged:
    """Marker: the subscriber missed `skipped` items because it read too slowly."""

    skipped: int


@attrs.define(eq=False)
class Subscriber(Generic[T]):
    """One reader's bounded queue; iterate it to get items and `Lagged` markers in order.

    A marker sits exactly where its items were skipped: the next item that fits is queued
    behind one (consecutive skips make one marker), and skips with no item after them yet are
    reported once the reader has read everything before them. With `max_bytes`, the items'
    `size` counts too: an item that would take the queued bytes past it is skipped like one
    that finds the queue full, unless the queue holds none (so an item larger than the bound
    still gets through, alone). An item offered `reserved` (an end its reader waits on) is
    never skipped by those bounds: it may take the queue up to `reserve` items past
    `capacity`, whatever their bytes, and only one that finds even those taken is skipped, and
    sets `overflowed`, as the reader can no longer be trusted to learn what ended."""

    capacity: int = DEFAULT_SUBSCRIBER_CAPACITY
    # items and the markers before them: at most one marker per item, so twice the items
    _sender: trio.MemorySendChannel[tuple[T | Lagged, int]] = attrs.field(init=False)
    _receiver: trio.MemoryReceiveChannel[tuple[T | Lagged, int]] = attrs.field(init=False)
    lag_limit: int | None = None  # skipped items after which `overflowed` is set
    overflowed: trio.Event = attrs.field(factory=trio.Event)  # or a reserved item was skipped
    skipped_total: int = 0
    _skipped_unreported: int = 0  # skipped since the last item queued: in no marker yet
    max_bytes: int | None = None  # queued bytes (by `size`) past which it lags; None: no bound
    size: Callable[[T], int] | None = None  # an item's bytes, when `max_bytes` is set
    queued: int = attrs.field(default=0, init=False)  # items waiting to be read (not markers)
    queued_bytes: int = 0  # the `size` of the items waiting to be read, each counted once
    reserve: int = 0  # items offered `reserved` that may be queued past `capacity`
    # how many items an item stands for when `offer` skips it (a lag notice: those it tells
    # of, so its count is never lost with it); None: one each
    weight: Callable[[T], int] | None = None
    _left: bool = attrs.field(default=False, init=False)  # `close` ran
    # set (and replaced) when an item is read, for a `send` waiting for room; None: none waits
    _room: trio.Event | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._sender, self._receiver = trio.open_memory_channel[tuple[T | Lagged, int]](
            2 * (self.capacity + self.reserve)
        )
        if (self.max_bytes is None) != (self.size is None):
            raise ValueError("a byte bound needs the items' size, and a size a bound")

    def offer(self, item: T, *, reserved: bool = False) -> bool:
        """Queue an item without waiting, behind the marker of any items skipped just before
        it; False (and counted) when the subscriber is full, in items or in bytes (`reserved`:
        only when its reserve is full too)."""
        size = 0 if self.size is None else self.size(item)
        if self._refuses(size, reserved):
            return self._skip(reserved, 1 if self.weight is None else self.weight(item))
        try:
            self._put(item, size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def send(self, item: T) -> None:
        """Queue an item that must never be skipped (a publisher that may wait, as core with
        a change of a pump's readers): wait while the queue holds `capacity` items, then queue
        it as `offer` would, whatever its bytes. Raises BrokenResourceError once the reader
        closed its end."""
        while self.queued >= self.capacity:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
        self._put(item, 0 if self.size is None else self.size(item))

    def _put(self, item: T, size: int) -> None:
        """Queue `item` of `size` bytes behind the marker of the items skipped just before it.
        The channel has room for both: items never pass `capacity` + `reserve` (`send` waits
        below `capacity`), each with at most one marker before it."""
        if self._skipped_unreported:
            self._sender.send_nowait((Lagged(self._skipped_unreported), 0))
            self._skipped_unreported = 0
        self._sender.send_nowait((item, size))
        self.queued += 1
        self.queued_bytes += size

    def offer_made(
        self, make: Callable[[], T], least_size: int = 0, *, reserved: bool = False
    ) -> bool:
        """`offer(make(), reserved=reserved)`, but an item the subscriber would skip even at
        `least_size` bytes (full in items, or its queued bytes plus those past the bound) is
        not made at all, only counted as skipped, as `offer` would count it: so a reader that
        stopped reading does not cost the publisher the making (say, encoding) of every item
        it misses. `least_size` must not exceed the made item's `size`."""
        if self._refuses(least_size, reserved):
            return self._skip(reserved)
        return self.offer(make(), reserved=reserved)

    def _refuses(self, size: int, reserved: bool) -> bool:
        """Whether an item of `size` bytes finds the subscriber full, in items or in bytes; a
        `reserved` one only when the reserve past `capacity` is taken too."""
        if reserved:
            return self.queued >= self.capacity + self.reserve
        bound = self.max_bytes
        over = bound is not None and self.queued_bytes > 0 and self.queued_bytes + size > bound
        return self.queued >= self.capacity or over  # (an empty queue takes any one item)

    def _skip(self, reserved: bool, count: int = 1) -> bool:
        """Count an item that did not fit, as `count` items (the reader learns by a `Lagged`
        marker); False. A `reserved` one overflows the subscriber at once: its reader waits
        on it."""
        self.skipped_total += count
        self._skipped_unreported += count
        if reserved or (self.lag_limit is not None and self.skipped_total > self.lag_limit):
            self.overflowed.set()
        return False

    @property
    def left(self) -> bool:
        """Whether the reader closed its end: a flag `close` sets, as core asks it of a
        serving connection on every call (channel statistics are an object each time)."""
        return self._left

    async def receive(self) -> T | Lagged:
        """The next item or marker in order; once everything queued is read, the marker of
        items skipped since the last one (before waiting for more, or before the end)."""
        try:
            entry, size = self._receiver.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            if self._skipped_unreported:
                marker = Lagged(self._skipped_unreported)
                self._skipped_unreported = 0
                return marker
            entry, size = await self._receiver.receive()
        if not isinstance(entry, Lagged):
            self.queued -= 1
            self.queued_bytes -= size
            if self._room is not None:
                self._room.set()
                self._room = None
        return entry

    def __aiter__(self) -> Subscriber[T]:
        return self

    async def __anext__(self) -> T | Lagged:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def statistics(self) -> trio.MemoryChannelStatistics:
        """Buffer use (items and markers), for the inspect tree."""
        return self._receiver.statistics()

    @property
    def drained(self) -> bool:
        """Nothing to read: no item queued and no lag left to report."""
        return not self._skipped_unreported and self.queued == 0

    def close(self) -> None:
        """Leave the broadcast (the reader's side): nothing more is read or queued."""
        self._receiver.close()
        self._left = True
        self.queued = self.queued_bytes = 0  # closing the last receiving end dropped them
        if self._room is not None:  # a waiting `send` finds the end closed
            self._room.set()

    def end(self) -> None:
        """End the stream (the publisher's side): readers see what is queued, then the end."""
        self._sender.close()

    def __enter__(self) -> Subscriber[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.define(eq=False)
class Broadcast(Generic[T]):
    """Publishes each item to every current subscriber, never waiting on any of them."""

    _subscribers: list[Subscriber[T]] = attrs.field(factory=list)
    published: int = 0

    def subscribe(
        self,
        capacity: int = DEFAULT_SUBSCRIBER_CAPACITY,
        lag_limit: int | None = None,
        weight: Callable[[T], int] | None = None,
    ) -> Subscriber[T]:
        """A new subscriber that sees items published from now on; once it has missed more than
        `lag_limit` items in all, its `overflowed` event is set (even while it reads nothing).
        `weight`: how many items one it skips counts as (see Subscriber)."""
        subscriber = Subscriber[T](capacity, lag_limit, weight=weight)
        self.add(subscriber)
        return subscriber

    def add(self, subscriber: Subscriber[T]) -> None:
        """Publish to `subscriber` from now on (one made elsewhere, handed over in a message)."""
        self._subscribers.append(subscriber)

    def publish(self, item: T) -> int:
        """Offer `item` to every subscriber; returns how many took it."""
        self.published += 1
        taken, someone_left = 0, False
        for subscriber in self._subscribers:
            if subscriber.offer(item):
                taken += 1
            elif subscriber.left:
                someone_left = True
        if someone_left:
            self._forget_the_left()
        return taken

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are attached."""
        self._forget_the_left()
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscriber's stream."""
        for subscriber in self._subscribers:
            subscriber.end()
        self._subscribers = []

    def _forget_the_left(self) -> None:
        self._subscribers = [subscriber for subscriber in self._subscribers if not subscriber.left]
