"""Doorbell: rings wake the owner, merge while one is pending, and are never lost."""

from __future__ import annotations

import trio
import trio.testing

from meshactors.actors import Doorbell


async def test_a_ring_before_the_wait_is_kept() -> None:
    bell = Doorbell()
    bell.ring()
    with trio.fail_after(5):
        await bell.wait()


async def test_rings_while_one_is_pending_merge_into_one_wake() -> None:
    bell = Doorbell()
    for _ in range(10):
        bell.ring()  # never waits, however many
    wakes: list[int] = []

    async def owner() -> None:
        while True:
            await bell.wait()
            wakes.append(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner)
        await trio.testing.wait_all_tasks_blocked()
        assert wakes == [1]
        bell.ring()
        await trio.testing.wait_all_tasks_blocked()
        assert wakes == [1, 1]
        nursery.cancel_scope.cancel()


async def test_clear_forgets_a_pending_ring() -> None:
    bell = Doorbell()
    bell.ring()
    bell.clear()
    bell.clear()  # nothing pending: harmless
    with trio.move_on_after(5) as waiting:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bell.wait)
            await trio.testing.wait_all_tasks_blocked()
            waiting.cancel()
    assert waiting.cancelled_caught
