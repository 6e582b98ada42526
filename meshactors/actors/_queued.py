"""Memory-channel hand-offs without needless scheduler passes: batching by draining, and
sends that wait only when they must.

An actor's task that handles (or writes) messages in batches takes the first with an
ordinary `receive` and then `take_queued`: the batch is what queued up while it was busy, so
a calm channel costs no waiting and a busy one gets fewer, larger writes.

`hand_over` is `send` for the hot paths (a request to core, a record to core, an answer to
the connection's writer): trio's `send` yields to the scheduler even when the channel has
room, a whole extra pass of the run loop per message; the sender here goes on at once and
waits (and checkpoints) only while the channel is full. A task that sends in a loop still
waits on its own input whenever that runs dry, so it yields no later than then.
"""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


def take_queued(receiver: trio.MemoryReceiveChannel[T], limit: int) -> list[T]:
    """Up to `limit` messages already waiting on `receiver`, oldest first; fewer (or none)
    when the channel runs empty or was closed."""
    taken: list[T] = []
    while len(taken) < limit:
        try:
            taken.append(receiver.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return taken


async def hand_over(sender: trio.MemorySendChannel[T], message: T) -> None:
    """Queue `message` now when the channel has room (no checkpoint: see the module's note),
    else wait for room as `send` does; raises what `send` raises on a closed channel, and
    Cancelled, sending nothing, when the caller's scope is cancelled already."""
    await trio.lowlevel.checkpoint_if_cancelled()  # not a schedule point when not cancelled
    try:
        sender.send_nowait(message)
    except trio.WouldBlock:
        await sender.send(message)
