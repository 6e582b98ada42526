"""A doorbell: the memory channel that wakes one actor's task to look at what changed.

Rings while one is pending merge into it, so a ring is never lost and they never pile up.
Any task may ring; only the owner clears and waits.
"""

from __future__ import annotations

import contextlib

import attrs
import trio


@attrs.define(eq=False)
class Doorbell:
    """A one-slot memory channel of wake-ups."""

    _ring: trio.MemorySendChannel[None] = attrs.field(init=False)
    _rung: trio.MemoryReceiveChannel[None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._ring, self._rung = trio.open_memory_channel[None](1)

    def ring(self) -> None:
        """Wake the owner (now, or at its next wait); never waits."""
        with contextlib.suppress(trio.WouldBlock):  # a ring is pending: the owner will look
            self._ring.send_nowait(None)

    def clear(self) -> None:
        """Forget a pending ring: the owner is about to look anyway."""
        with contextlib.suppress(trio.WouldBlock):
            self._rung.receive_nowait()

    async def wait(self) -> None:
        """Wait for a ring (at once if one is pending) and take it."""
        await self._rung.receive()
