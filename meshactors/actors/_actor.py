"""The actor base: a named unit of work with an optional bounded inbox and published figures."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import trio

from meshactors.actors._ask import Reply, ask

M = TypeVar("M")
T = TypeVar("T")

DEFAULT_INBOX_CAPACITY = 64  # messages an actor may have queued before senders wait


@attrs.define(eq=False)
class Inbox(Generic[M]):
    """A bounded memory channel pair that outlives restarts of the actor that reads it: only
    the owning actor's task reads and handles its messages; senders wait while it is full."""

    capacity: int = DEFAULT_INBOX_CAPACITY
    sender: trio.MemorySendChannel[M] = attrs.field(init=False)
    receiver: trio.MemoryReceiveChannel[M] = attrs.field(init=False)
    # messages `offer` found no room for: the inbox's own count, as a channel keeps its
    # statistics, so no actor's state is written from its senders' tasks
    refused: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.sender, self.receiver = trio.open_memory_channel[M](self.capacity)

    async def send(self, message: M) -> None:
        """Queue `message` for the owner, waiting while the inbox is full."""
        await self.sender.send(message)

    def offer(self, message: M) -> bool:
        """Queue `message` if there is room, never waiting; a full inbox refuses and counts it."""
        try:
            self.sender.send_nowait(message)
        except trio.WouldBlock:
            self.refused += 1
            return False
        return True

    async def ask(
        self, build: Callable[[Reply[T]], M], *, timeout: float, what: str, settle: bool = False
    ) -> T:
        """Ask the owning actor and wait for its answer under a deadline (`ask`)."""
        return await ask(self.sender, build, timeout=timeout, what=what, settle=settle)

    def statistics(self) -> trio.MemoryChannelStatistics:
        """Buffer use, for the inspect tree."""
        return self.receiver.statistics()


class Actor(abc.ABC):
    """Something a supervisor runs: `run` calls `task_status.started()` once it serves."""

    kind: ClassVar[str] = "actor"

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; returning means a normal exit, raising means a crash."""

    def figures(self) -> Mapping[str, Any]:
        """Actor-specific numbers for `inspect`; override to publish some."""
        return {}

    def inbox_statistics(self) -> trio.MemoryChannelStatistics | None:
        """Statistics of the actor's `inbox` attribute, when it has one."""
        inbox = getattr(self, "inbox", None)
        return inbox.statistics() if isinstance(inbox, Inbox) else None
