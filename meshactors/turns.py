"""Members of a network taking turns at something periodic (rtt probes, state summaries).

Each member comes every `interval` while that stays under `rate` turns a second, less often
beyond: a round to every member each interval would cost more per second as the network
grows (at 300 peers, a probe each every 15 s is 20 a second per daemon).
"""

from collections.abc import Awaitable, Callable, Sequence

import trio


async def take_turns(
    members: Callable[[], Sequence[str]],
    visit: Callable[[str], Awaitable[None]],
    *,
    interval: float,
    rate: float,
) -> None:
    """Forever: `visit` each of `members()` in turn, spaced by `turn_gap`; with none, look
    again after `interval`. The members are read again after each round."""
    while True:
        current = members()
        if not current:
            await trio.sleep(interval)
        for member in current:
            await trio.sleep(turn_gap(len(current), interval=interval, rate=rate))
            await visit(member)


def turn_gap(members: int, *, interval: float, rate: float) -> float:
    """Seconds between two turns when `members` take turns: each every `interval` while that
    stays under `rate` turns a second, less often beyond."""
    return max(interval / max(members, 1), 1.0 / rate)
