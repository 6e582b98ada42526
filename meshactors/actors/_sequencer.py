"""Work of one key in the order it was begun, work of other keys meanwhile: a connection's
subscribe and unsubscribe of one channel take effect in the order sent, whichever task runs
first."""

from __future__ import annotations

from collections.abc import Hashable
from types import TracebackType
from typing import Generic, TypeVar

import attrs
import trio

K = TypeVar("K", bound=Hashable)


@attrs.define(eq=False)
class Turn(Generic[K]):
    """One place in a key's line: `async with` waits for every turn before it to end, and
    ends this one on leaving (or on being cancelled while it waited)."""

    _sequencer: Sequencer[K]
    _key: K
    _before: Turn[K] | None  # the turn it waits for; None once its turn came
    _ended: trio.Event = attrs.field(factory=trio.Event)

    async def __aenter__(self) -> None:
        try:
            while (before := self._before) is not None:
                await before._ended.wait()
                # one given up while it waited ended early: wait for the one it waited for
                self._before = before._before
        except BaseException:
            self._end()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._end()

    def _end(self) -> None:
        self._ended.set()
        self._sequencer._forget_if_idle(self._key)


@attrs.define(eq=False)
class Sequencer(Generic[K]):
    """Lines of turns by key. It keeps one entry per key whose line has a turn not ended, so
    it holds no more than the work begun and not finished."""

    _last: dict[K, Turn[K]] = attrs.field(factory=dict)

    def turn(self, key: K) -> Turn[K]:
        """A place at the end of `key`'s line, taken now, in the caller's task: turns come in
        the order of these calls. It must be entered (`async with`), or every later turn of
        `key` waits for good."""
        turn = self._last[key] = Turn(self, key, self._last.get(key))
        return turn

    def _forget_if_idle(self, key: K) -> None:
        """Drop `key`'s line once every turn in it ended (the last one may have ended while an
        earlier one still ran: then the earlier one drops it when it ends)."""
        turn = self._last.get(key)
        while turn is not None and turn._ended.is_set():
            turn = turn._before
        if turn is None:
            self._last.pop(key, None)
