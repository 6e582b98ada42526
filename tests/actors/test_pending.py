"""Pending: awaited, the first outcome wins, a cancelled wait abandons."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import Pending


async def test_a_waiter_gets_the_value_or_the_error_settled_later() -> None:
    value, failure = Pending[int](), Pending[int]()
    got: list[Any] = []

    async def wait_both() -> None:
        got.append(await value)
        with pytest.raises(KeyError):
            await failure

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_both)
        await trio.testing.wait_all_tasks_blocked()
        value.resolve(7)
        failure.fail(KeyError("gone"))
    assert got == [7]


async def test_only_the_first_outcome_counts() -> None:
    pending = Pending[int]()
    pending.resolve(1)
    pending.fail(ValueError("too late"))
    pending.resolve(2)
    assert pending.settled
    assert await pending == 1


async def test_a_cancelled_waiter_abandons_the_work_unless_it_was_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    abandoned: list[str] = []
    pending = Pending[int](lambda: abandoned.append("abandoned"))
    with trio.move_on_after(0.01):
        await pending
    assert abandoned == ["abandoned"]
    pending.resolve(3)
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await pending == 3  # settled: answered at once, nothing is abandoned
    assert not scope.cancelled_caught
    assert abandoned == ["abandoned"]
