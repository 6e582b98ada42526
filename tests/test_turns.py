"""Taking turns: each member in order, spaced so the rate stays bounded as members grow."""

import functools

import trio
import trio.testing

from meshactors.turns import take_turns, turn_gap


def test_the_gap_spreads_the_interval_until_the_rate_bounds_it() -> None:
    assert turn_gap(0, interval=60, rate=1) == 60
    assert turn_gap(6, interval=60, rate=1) == 10
    assert turn_gap(300, interval=60, rate=1) == 1  # each every 300 s, not 5 turns a second


async def test_members_are_visited_in_turn_and_read_again_each_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    members: list[str] = []
    visits: list[tuple[float, str]] = []

    async def visit(member: str) -> None:
        visits.append((trio.current_time(), member))
        if len(visits) == 3:
            members.append("c")  # joins during the second round: visited from the next

    with trio.move_on_after(250):
        async with trio.open_nursery() as nursery:
            turns = functools.partial(take_turns, lambda: list(members), visit, interval=60, rate=1)
            nursery.start_soon(turns)
            await trio.sleep(30)  # nobody at first: it looks again after the interval (60 s)
            members.extend(["a", "b"])
    assert visits == [  # two members: one every 30 s; three: one every 20 s
        (90, "a"),
        (120, "b"),
        (150, "a"),
        (180, "b"),
        (200, "a"),
        (220, "b"),
        (240, "c"),
    ]
