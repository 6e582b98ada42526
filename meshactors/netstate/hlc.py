"""A hybrid logical clock: wall-clock milliseconds plus a counter, never going backwards.

Each write of the replicated state map is stamped with the clock's next value; a value heard
from a peer moves the clock forward, so a write made after seeing another one always carries
a later stamp, whatever the two machines' wall clocks say.
"""

from __future__ import annotations

import attrs

MAX_WALL_MS = 2**53  # a stamp's wall part: milliseconds since 1970, below 2^53
MAX_COUNTER = 2**31  # a stamp's counter, below 2^31 (the wall part moves on before that)


@attrs.frozen(order=True)
class Stamp:
    """One clock value: ordered by wall milliseconds, then counter."""

    wall: int
    counter: int

    def valid(self) -> bool:
        """Whether both parts are in range (a peer's stamp is checked with this)."""
        return 0 <= self.wall < MAX_WALL_MS and 0 <= self.counter < MAX_COUNTER


ZERO = Stamp(0, 0)


@attrs.define
class HybridClock:
    """The clock of one network's state map on this device: `tick` stamps a local write,
    `observe` takes in a stamp heard from a peer."""

    last: Stamp = ZERO

    def tick(self, now_ms: int, after: Stamp = ZERO) -> Stamp:
        """A stamp later than every stamp seen and than `after` (the entry a write replaces),
        using the wall clock `now_ms` when it is ahead."""
        floor = max(self.last, after)
        if now_ms > floor.wall:
            self.last = Stamp(now_ms, 0)
        elif floor.counter + 1 < MAX_COUNTER:
            self.last = Stamp(floor.wall, floor.counter + 1)
        else:  # a counter run out: borrow the next millisecond
            self.last = Stamp(floor.wall + 1, 0)
        return self.last

    def observe(self, stamp: Stamp) -> None:
        """Move past a stamp heard from a peer, so our next write sorts after it."""
        if stamp > self.last:
            self.last = stamp
