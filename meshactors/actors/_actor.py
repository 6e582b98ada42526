"""The actor base: a named unit of work with an optional bounded inbox and published figures."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

import attrs
import trio

from meshactors.actors._ask import Reply, ask
from meshactors.actors._registry import current_node

M = TypeVar("M")
T = TypeVar("T")

DEFAULT_INBOX_CAPACITY = 64  # messages an actor may have queued before senders wait
INLINE_STOP_TIMEOUT = 5.0  # seconds a stopping reader waits for a handler a sender runs


@attrs.define(eq=False)
class Inbox(Generic[M]):
    """A bounded memory channel pair that outlives restarts of the actor that reads it.

    An actor that reads it with `serve` may have messages `put` to it handled in the sending
    task while it waits with nothing queued: the message is handled in order, one at a time,
    without the scheduler pass a hand-off costs (the data path of a network's peers).
    """

    capacity: int = DEFAULT_INBOX_CAPACITY
    sender: trio.MemorySendChannel[M] = attrs.field(init=False)
    receiver: trio.MemoryReceiveChannel[M] = attrs.field(init=False)
    _handler: Callable[[M], Awaitable[None]] | None = attrs.field(default=None, init=False)
    _waiting: trio.CancelScope | None = attrs.field(default=None, init=False)  # serve's wait
    _handing: bool = attrs.field(default=False, init=False)  # a sender runs the handler
    _handed: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _failure: Exception | None = attrs.field(default=None, init=False)
    _carried: list[M] = attrs.field(factory=list, init=False)  # taken, not yet handled (0 or 1)

    def __attrs_post_init__(self) -> None:
        self.sender, self.receiver = trio.open_memory_channel[M](self.capacity)

    async def put(self, message: M) -> None:
        """Give the reader `message`: handled here, in the calling task, when `serve` waits
        with nothing queued; else queued (waiting while the inbox is full). A failure of the
        handler is the reader's: `serve` raises it, the caller carries on."""
        handler = self._handler
        if handler is None or self._handing or not self._reader_waits():
            await self.sender.send(message)
            return
        self._handing = True
        try:
            await handler(message)
        except Exception as failure:
            self._failure = failure
            if self._waiting is not None:
                self._waiting.cancel()
        finally:
            self._handing = False
            if self._handed:  # the reader, or a stopping serve, waits for this handler
                self._handed.unpark_all()

    def _reader_waits(self) -> bool:
        stats = self.receiver.statistics()
        return self._waiting is not None and stats.tasks_waiting_receive > 0

    async def serve(self, handle: Callable[[M], Awaitable[None]]) -> NoReturn:
        """Read and handle messages one at a time, for ever (see the class docstring). When it
        stops, a handler still running in a sender's task is waited for (INLINE_STOP_TIMEOUT),
        so the actor's own cleanup never overlaps it."""
        self._failure = None
        self._handler = handle
        try:
            while True:
                await handle(await self._next())
        finally:
            self._handler = None
            with trio.move_on_after(INLINE_STOP_TIMEOUT, shield=True):
                while self._handing:
                    await self._handed.park()

    async def _next(self) -> M:
        """The next message once no sender is running the handler; raises a sender's failure.

        A message taken while a sender runs the handler is carried (across a failure, a
        cancellation, a restart) until it is returned: the inbox never loses one it took."""
        if not self._carried:
            with trio.CancelScope() as self._waiting:  # cancelled by a failing sender
                try:
                    self._carried.append(self.receiver.receive_nowait())
                except trio.WouldBlock:
                    self._carried.append(await self.receiver.receive())
            self._waiting = None
        while self._handing:
            await self._handed.park()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        return self._carried.pop()

    async def ask(self, build: Callable[[Reply[T]], M], *, timeout: float, what: str) -> T:
        """Ask the owning actor and wait for its answer under a deadline."""
        return await ask(self.sender, build, timeout=timeout, what=what)

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


def cleanup_scope() -> trio.CancelScope:
    """A shielded scope for `finally` cleanup, bounded by the current actor's shutdown timeout."""
    return trio.move_on_after(current_node().shutdown_timeout, shield=True)
