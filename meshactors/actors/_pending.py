"""A one-shot outcome: the owner settles it, the asker awaits it."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import attrs
import trio

T = TypeVar("T")


def _nothing() -> None:
    """The default `abandon`: nothing to undo."""


@attrs.define(eq=False)
class Pending(Generic[T]):
    """The outcome of work another task finishes: a value, or the exception it failed with.

    Awaiting it waits for the outcome; `abandon` runs (in the waiter's task: it should only
    send a message to the owner) when a waiter is cancelled before the outcome came. Only the
    first outcome counts.
    """

    abandon: Callable[[], None] = _nothing
    _outcome: T | Exception | None = attrs.field(default=None, init=False)
    _settled: bool = attrs.field(default=False, init=False)
    _waiters: trio.Event | None = attrs.field(default=None, init=False)

    @property
    def settled(self) -> bool:
        """Whether the outcome is in."""
        return self._settled

    def resolve(self, value: T) -> None:
        """Settle with a value."""
        self._settle(value)

    def fail(self, error: Exception) -> None:
        """Settle with an error, raised in the waiter."""
        self._settle(error)

    async def wait(self) -> T:
        """The value (or raise the error); a cancelled wait abandons the work. A settled one
        answers at once, no checkpoint: its waiter got it from an ask, which waited already,
        and an extra pass of the scheduler per answered request is what a hot path can't
        afford."""
        if not self._settled:
            if self._waiters is None:
                self._waiters = trio.Event()
            try:
                await self._waiters.wait()
            except trio.Cancelled:
                if not self._settled:
                    self.abandon()
                raise
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome  # type: ignore[return-value]  # settled: T

    def __await__(self) -> Generator[Any, None, T]:
        return self.wait().__await__()

    def _settle(self, outcome: T | Exception) -> None:
        if self._settled:
            return
        self._outcome, self._settled = outcome, True
        if self._waiters is not None:
            self._waiters.set()
