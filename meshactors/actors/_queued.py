"""Batching by draining: what is already queued on a memory channel, taken without waiting.

An actor's task that handles (or writes) messages in batches takes the first with an
ordinary `receive` and then this: the batch is what queued up while it was busy, so a calm
channel costs no waiting and a busy one gets fewer, larger writes.
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
