"""The `core` actor of a network: the one owner of its state, whose parts hold that state.

Its task handles every message on its inbox, one at a time: what the link heard (records,
presence, link status) and ops' requests (`NetworkCore.ask`, reached through `Network.ask`).
Its parts (the peer table, membership, rpc, channels, streams and the state replica) are
plain objects only core's tasks touch; their own loops (rtt probes, held status events,
deadlines, postboxes) run in core's nursery, so when core stops or crashes everything that
held network state stops with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Protocol, TypeVar

import attrs
import trio

from meshactors.actors import Actor, LanedInbox, Reply, cleanup_scope
from meshactors.network.link import LinkEvent
from meshactors.network.peers import Peers

T = TypeVar("T")

CORE_INBOX = 1024  # link events queued before the link's reader waits, and as many requests
COMMAND_TIMEOUT = 10.0  # seconds an op waits for core to answer


class CorePart(Protocol):
    """A part of core with a loop of its own (run in core's nursery) and figures."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `task_status.started()` once it serves."""

    def figures(self) -> dict[str, object]:
        """The part's numbers, shown under its name in core's figures."""


@attrs.frozen
class _Call:
    """Run `fn` inside core and answer with its result."""

    fn: Callable[[], Awaitable[Any]]
    reply: Reply[Any]


@attrs.frozen
class _Tell:
    """Run `fn` inside core; nobody waits for it (e.g. a waiter that gave up)."""

    fn: Callable[[], None]


CoreMessage = LinkEvent | _Call | _Tell


@attrs.define(eq=False)
class NetworkCore(Actor):
    """Owns one network's peers, calls, claims, subscriptions and retained values: the link
    feeds its inbox, ops ask it, and only its task runs its parts' code."""

    kind: ClassVar[str] = "core"

    peers: Peers
    parts: dict[str, CorePart] = attrs.field(factory=dict)  # by name in figures; started in order
    inbox: LanedInbox[CoreMessage] = attrs.field(factory=lambda: LanedInbox(CORE_INBOX, CORE_INBOX))

    def inbox_statistics(self) -> trio.MemoryChannelStatistics:
        """The link's lane of core's inbox (a laned inbox is no plain `Inbox`)."""
        return self.inbox.statistics()

    def figures(self) -> dict[str, object]:
        return {**self.peers.figures(), **{n: p.figures() for n, p in self.parts.items()}}

    async def ask(
        self,
        fn: Callable[[], Awaitable[T]],
        what: str,
        timeout: float = COMMAND_TIMEOUT,
        *,
        shield: bool = False,
    ) -> T:
        """Run `fn` in core's task and return its result (AskTimeout, ActorGone; `shield`: see
        `ask`)."""
        result: T = await self.inbox.ask(
            lambda reply: _Call(fn, reply),
            timeout=timeout,
            what=f"{self.peers.network}: {what}",
            shield=shield,
        )
        return result

    def tell(self, fn: Callable[[], None]) -> bool:
        """Have core run `fn` in its task, without waiting; False when its inbox is full."""
        try:
            self.inbox.tell_nowait(_Tell(fn))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def retire(self) -> None:
        """Core is stopped for good (its network removed, or `networks` stopped): the asks
        still queued are dropped and every later ask or tell refused, all at once (ActorGone:
        `unavailable`), where they would wait out their deadline for a core that never reads."""
        for message in self.inbox.close():
            if isinstance(message, _Call):
                message.reply.drop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.peers.load()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.peers.ping_loop)
                nursery.start_soon(self.peers.retell_loop)
                for part in self.parts.values():
                    await nursery.start(part.run)
                task_status.started()
                while True:
                    await self.handle(await self.inbox.receive())
        finally:
            with cleanup_scope():
                await self.peers.save_unsaved()

    async def handle(self, message: CoreMessage) -> None:
        """Handle one message, then let the peer table settle (its phase, held approvals)."""
        match message:
            case _Call(fn=fn, reply=reply):
                await reply.answer_with(fn)
            case _Tell(fn=told):
                told()
            case _:
                await self.peers.on_link_event(message)
        await self.peers.settle(queued=self.inbox.waiting)
