"""Broadcast: every subscriber gets every item; a slow one gets a Lagged marker, never blocks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from meshactors.actors import Broadcast, Lagged, Subscriber


async def _read(sub: Subscriber[str], count: int) -> list[str | Lagged]:
    """The next `count` items and markers (failing, not hanging, if fewer come)."""
    with trio.fail_after(5):
        return [await sub.receive() for _ in range(count)]


async def test_every_subscriber_gets_every_item_in_order() -> None:
    hub: Broadcast[int] = Broadcast()
    first, second = hub.subscribe(8), hub.subscribe(8)
    for item in range(5):
        assert hub.publish(item) == 2
    assert [await first.receive() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert [await second.receive() for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_slow_subscriber_lags_without_blocking_the_publisher_or_others() -> None:
    hub: Broadcast[int] = Broadcast()
    slow, fast = hub.subscribe(2), hub.subscribe(100)
    for item in range(10):
        hub.publish(item)  # never waits, even though `slow` reads nothing
    assert [await fast.receive() for _ in range(10)] == list(range(10))
    assert [await slow.receive() for _ in range(3)] == [0, 1, Lagged(8)]
    assert slow.skipped_total == 8
    hub.publish(10)
    assert await slow.receive() == 10


async def test_the_marker_sits_where_the_items_were_skipped_not_after_newer_ones() -> None:
    sub = Subscriber[str](1)
    assert sub.offer("a")
    assert not sub.offer("b") and not sub.offer("c")  # full: skipped
    assert await sub.receive() == "a"
    assert sub.offer("d") and sub.queued == 1  # the marker takes no item's room
    assert await _read(sub, 2) == [Lagged(2), "d"]
    assert (sub.queued, sub.skipped_total) == (0, 2)


async def test_skips_after_the_last_item_are_reported_before_the_end_of_the_stream() -> None:
    hub: Broadcast[int] = Broadcast()
    sub = hub.subscribe(1)
    for item in range(3):
        hub.publish(item)
    hub.close()
    assert [item async for item in sub] == [0, Lagged(2)]


async def test_a_subscriber_that_closes_its_end_leaves_and_reads_nothing_more() -> None:
    hub: Broadcast[str] = Broadcast()
    with hub.subscribe(4) as sub:
        hub.publish("a")
        assert hub.subscriber_count == 1
    assert hub.subscriber_count == 0  # the publisher saw the closed end; nobody told it
    assert [item async for item in sub] == []
    assert hub.publish("b") == 0


async def test_the_publisher_forgets_a_subscriber_that_left_when_it_next_publishes() -> None:
    hub: Broadcast[str] = Broadcast()
    stays, leaves = hub.subscribe(4), hub.subscribe(4)
    assert hub.subscriber_count == 2
    leaves.close()
    assert hub.publish("a") == 1
    assert hub.subscriber_count == 1
    stays.close()
    assert hub.publish("b") == 0


async def test_close_wakes_a_waiting_reader() -> None:
    hub: Broadcast[str] = Broadcast()
    sub = hub.subscribe(4)
    got: list[object] = []

    async def read_all() -> None:
        got.extend([item async for item in sub])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await trio.testing.wait_all_tasks_blocked()
        hub.publish("x")
        hub.close()
    assert got == ["x"]


async def test_a_byte_bound_skips_what_would_pass_it_and_releases_bytes_as_they_are_read() -> None:
    sizes = {"big": 6, "mid": 4, "small": 1, "huge": 50}
    sub = Subscriber[str](100, lag_limit=2, max_bytes=10, size=sizes.__getitem__)
    assert sub.offer("big") and sub.offer("mid")  # 10 bytes: at the bound, not past it
    assert not sub.offer("small")  # past it, though 98 more items would fit
    assert (sub.queued, sub.queued_bytes, sub.skipped_total) == (2, 10, 1)
    assert await sub.receive() == "big"  # its bytes are free again once read
    assert sub.queued_bytes == 4
    assert sub.offer("small") and not sub.offer("big")
    assert sub.overflowed.is_set() is False  # 2 skipped: at the lag limit, not past it
    # each marker where its item was skipped: "small" came after the first, "big" after it
    assert await _read(sub, 4) == ["mid", Lagged(1), "small", Lagged(1)]
    assert sub.queued_bytes == 0
    assert sub.offer("huge")  # larger than the bound, but the queue is empty: it goes alone
    assert not sub.offer("small")
    assert sub.overflowed.is_set()  # 3 skipped in all, whichever bound skipped them
    assert [await sub.receive(), sub.queued_bytes] == ["huge", 0]


async def test_an_item_refused_at_its_least_size_is_not_made_but_counted_as_skipped() -> None:
    made: list[str] = []

    def make(item: str) -> Callable[[], str]:
        """A maker of `item` that notes it was made."""

        def made_item() -> str:
            made.append(item)
            return item

        return made_item

    sub = Subscriber[str](2, lag_limit=2, max_bytes=10, size=len)
    assert sub.offer_made(make("aaaa"), 4) and not sub.offer_made(make("bbbbbbb"), 7)
    assert not sub.offer_made(make("ccccccc"), 1)  # it may fit at 1 byte: made, then skipped
    assert made == ["aaaa", "ccccccc"] and sub.skipped_total == 2  # 4 + 7 passes 10 bytes
    assert sub.offer_made(make("dd"), 0) and not sub.offer_made(make("e"), 0)  # full: 2 items
    assert made == ["aaaa", "ccccccc", "dd"]  # "e" was not made either
    assert sub.overflowed.is_set()  # 3 skipped in all: refused unmade counts the same
    assert await _read(sub, 4) == ["aaaa", Lagged(2), "dd", Lagged(1)]


async def test_a_reserved_item_passes_a_full_queue_behind_its_marker_up_to_the_reserve() -> None:
    sub = Subscriber[str](1, max_bytes=4, size=len, reserve=2)
    assert sub.offer("chunk") and not sub.offer("next")  # full: skipped
    assert sub.offer("end", reserved=True)  # past the items and the bytes, in the reserve
    assert sub.offer_made(lambda: "fin", 3, reserved=True)
    assert not sub.overflowed.is_set()
    assert not sub.offer("more", reserved=True)  # the reserve is taken too: skipped, and
    assert sub.overflowed.is_set()  # the reader cannot be trusted to learn what ended
    assert (sub.queued, sub.skipped_total) == (3, 2)
    assert await _read(sub, 5) == ["chunk", Lagged(1), "end", "fin", Lagged(1)]


async def test_a_sent_item_waits_for_room_behind_its_marker_and_is_never_skipped() -> None:
    sub = Subscriber[str](2)
    assert sub.offer("a") and sub.offer("b") and not sub.offer("c")  # full: skipped
    sent = trio.Event()

    async def send_join() -> None:
        await sub.send("join")
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_join)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # full in items: it waits, where `offer` would skip
        assert await sub.receive() == "a"  # room: the send goes on
    assert sub.queued == 2 and sub.skipped_total == 1
    assert await _read(sub, 3) == ["b", Lagged(1), "join"]


async def test_a_send_waiting_for_room_fails_once_the_reader_closes() -> None:
    sub = Subscriber[str](1)
    assert sub.offer("a")
    failed = trio.Event()

    async def send_join() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await sub.send("join")
        failed.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_join)
            await trio.testing.wait_all_tasks_blocked()
            sub.close()
    assert failed.is_set()
