"""The `core` actor of a network: the one owner of its state, the peer table and its parts.

Its task handles every message on its inbox, one at a time: what the link heard (records,
presence) and ops' requests (`Peers.ask`). Its parts, `rpc` and `channels`, are plain objects
whose own loops (deadlines, postboxes) run in core's nursery, so when core stops or crashes
everything that held network state stops with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

import attrs
import trio

from meshactors.actors import Actor, cleanup_scope
from meshactors.network.peers import Peers


class CorePart(Protocol):
    """A part of core with a loop of its own (run in core's nursery) and figures."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `task_status.started()` once it serves."""

    def figures(self) -> dict[str, object]:
        """The part's numbers, shown under its name in core's figures."""


@attrs.define(eq=False)
class NetworkCore(Actor):
    """Owns one network's peers, calls, claims, subscriptions and retained values."""

    kind: ClassVar[str] = "core"

    peers: Peers
    parts: Mapping[str, CorePart] = attrs.field(factory=dict)

    def inbox_statistics(self) -> trio.MemoryChannelStatistics:
        """Core's inbox is the peer table's (the link and ops send to it)."""
        return self.peers.inbox.statistics()

    def figures(self) -> dict[str, object]:
        return {**self.peers.figures(), **{n: p.figures() for n, p in self.parts.items()}}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.peers.load()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.peers.ping_loop)
                for part in self.parts.values():
                    await nursery.start(part.run)
                task_status.started()
                while True:
                    await self.peers.handle(await self.peers.inbox.receive())
        finally:
            with cleanup_scope():
                await self.peers.save_unsaved()
