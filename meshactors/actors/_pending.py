"""A one-shot outcome, delivered by whichever task learns it: awaited, or handed on at once."""

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

    Awaiting it waits for the outcome; a caller that would only wait to pass the outcome on
    gives `on_settled` a callback instead, called from the settling task (no task waits, no
    scheduler pass). `abandon` runs when a waiter is cancelled before the outcome came. Only
    the first outcome counts.
    """

    abandon: Callable[[], None] = _nothing
    _outcome: T | Exception | None = attrs.field(default=None, init=False)
    _settled: bool = attrs.field(default=False, init=False)
    _waiters: trio.Event | None = attrs.field(default=None, init=False)
    _callback: Callable[[T | Exception], None] | None = attrs.field(default=None, init=False)

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

    def on_settled(self, callback: Callable[[T | Exception], None]) -> None:
        """Call `callback` with the outcome when it comes (now, if it is in)."""
        if self._settled:
            callback(self._outcome)  # type: ignore[arg-type]  # settled: T or an exception
        else:
            self._callback = callback

    async def wait(self) -> T:
        """The value (or raise the error); a cancelled wait abandons the work."""
        if self._settled:
            await trio.lowlevel.checkpoint()
        else:
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
        if self._callback is not None:
            callback, self._callback = self._callback, None
            callback(outcome)
