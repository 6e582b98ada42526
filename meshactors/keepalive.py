"""A WebSocket keepalive that tells a dead path from a busy peer, for the broker and the link.

A pong waits behind every message queued before it, and a peer that is busy reading a backlog
answers late; dropping it then only adds a reconnect (and its hellos) to the load. So a ping
counts as unanswered once a whole deadline passed with no pong and nothing else heard: the
caller passes a counter of its progress (messages read or written) to look at. Progress is no
proof of life, though: writes to a stopped peer (SIGSTOP, a suspended laptop, a paused VM)
land in its socket buffer, and others' traffic to it keeps them coming. So a ping unanswered
for a ceiling (a few deadlines) counts as unanswered too, whatever moved meanwhile.
"""

import enum
from collections.abc import Awaitable, Callable

import trio


class PingOutcome(enum.Enum):
    """How a keepalive ping ended: the caller drops the connection on all but ANSWERED."""

    ANSWERED = "answered"
    SILENT = "silent"  # a whole deadline passed with no pong and no progress
    LATE = "late"  # the ceiling passed with no pong, progress or not


async def await_pong(
    ping: Callable[[], Awaitable[None]],
    progress: Callable[[], int],
    deadline: float,
    ceiling: float,
) -> PingOutcome:
    """Await `ping()` until it is answered, a `deadline` passes in which neither the pong came
    nor `progress()` moved (the path is dead, or the peer stopped), or `ceiling` seconds pass
    without the pong at all (the peer stopped, its socket buffer taking what we write)."""
    silent = trio.CancelScope()
    with trio.move_on_after(ceiling) as late, silent:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_end_when_silent, silent, progress, deadline)
                await ping()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the watcher raises nothing of its own: this is
            raise group.exceptions[0] from None  # ping()'s error (or a cancel), bare as ping's
    if silent.cancelled_caught:
        return PingOutcome.SILENT
    return PingOutcome.LATE if late.cancelled_caught else PingOutcome.ANSWERED


async def _end_when_silent(
    waiting: trio.CancelScope, progress: Callable[[], int], deadline: float
) -> None:
    """Cancel `waiting` at the end of the first `deadline` window in which progress stood."""
    seen = progress()
    while True:
        await trio.sleep(deadline)
        now = progress()
        if now == seen:
            waiting.cancel()
            return
        seen = now
