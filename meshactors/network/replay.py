"""Sliding-window replay filter over a sender's frame counters (RFC 6479 style, one int bitmap).

The window remembers the highest counter accepted and which of the `size` counters up to and
including it were seen. A counter above the highest is fresh; one inside the window is fresh
until marked; one below the window is too old to tell apart from a replay, so it is refused.
Counters start at 1: counter 0 is never sent and never fresh.
"""

import attrs

REPLAY_WINDOW_SIZE = 1024  # counters tracked below the highest: the reordering we tolerate


def _positive(_instance: object, _attribute: "attrs.Attribute[int]", value: int) -> None:
    if value < 1:
        raise ValueError(f"replay window size must be at least 1, got {value}")


@attrs.define(on_setattr=attrs.setters.NO_OP)  # `size` is checked once: marks set no validator
class ReplayWindow:
    """Which frame counters of one sender session were already accepted, within `size` of the top.

    Split into `check` (no state change) and `mark` so a caller can authenticate a frame between
    the two: a forged frame must never move the window.
    """

    size: int = attrs.field(default=REPLAY_WINDOW_SIZE, validator=_positive)
    highest: int = attrs.field(default=0, init=False)
    # Bit i set means counter `highest - i` was accepted; bits at and above `size` are dropped.
    _seen: int = attrs.field(default=0, init=False, repr=False)
    _mask: int = attrs.field(
        default=attrs.Factory(lambda self: (1 << self.size) - 1, takes_self=True),
        init=False,
        repr=False,
    )

    def check(self, counter: int) -> bool:
        """True when `counter` is fresh: above the highest, or inside the window and unseen."""
        if counter > self.highest:
            return True
        age = self.highest - counter
        return counter >= 1 and age < self.size and not (self._seen >> age) & 1

    def mark(self, counter: int) -> None:
        """Record `counter` as accepted; it must have passed `check` (else ValueError)."""
        if not self.check(counter):
            raise ValueError(f"counter {counter} is not fresh in this replay window")
        if counter > self.highest:
            shift = counter - self.highest
            self._seen = ((self._seen << shift) | 1) & self._mask if shift < self.size else 1
            self.highest = counter
        else:
            self._seen |= 1 << (self.highest - counter)
