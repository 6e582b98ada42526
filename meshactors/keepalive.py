"""A WebSocket keepalive that tells a dead path from a busy peer, for the broker and the link.

A pong waits behind every message queued before it, and a peer that is busy reading a backlog
answers late; dropping it then only adds a reconnect (and its hellos) to the load. So a ping
counts as unanswered only when a whole deadline passed with no pong and nothing else heard:
the caller passes a counter of its progress (messages read or written) to look at.
"""

from collections.abc import Awaitable, Callable

import trio


async def answered_or_heard(
    ping: Callable[[], Awaitable[None]], progress: Callable[[], int], deadline: float
) -> bool:
    """Await `ping()`; True once it is answered. False when `deadline` seconds pass in which
    neither the pong came nor `progress()` moved (the path is dead, or the peer stopped)."""
    with trio.CancelScope() as waiting:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_end_when_silent, waiting, progress, deadline)
                await ping()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the watcher raises nothing of its own: this is
            raise group.exceptions[0] from None  # ping()'s error (or a cancel), bare as ping's
    return not waiting.cancelled_caught


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
