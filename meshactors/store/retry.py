"""Waiting out a state database that refuses writes (`storage`: a full disk, another process's
lock held past the busy timeout): a store call of an actor's own work is made again every
STORAGE_RETRY_S, warned once an interval, so the actor waits for the disk instead of crashing
(and, crash after crash, stopping the daemon). The outbox's loops and the event hub's start
share it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import structlog
import trio

from meshactors.broker.limits import TokenBucket
from meshactors.wire.ipc import ErrorCode, OpError

log = structlog.get_logger("meshactors.store")

T = TypeVar("T")
Pause = Callable[[float], Awaitable[object]]  # how a refused call waits its STORAGE_RETRY_S

# A store call the state database refuses (`storage`: nothing of it was written) is made again
# after this many seconds, the work it carries kept.
STORAGE_RETRY_S = 5.0
STORAGE_LOG_INTERVAL_S = 60.0  # at most one warning per this many seconds while it refuses


@attrs.define
class StorageRetry:
    """One actor's retries of refused store calls: how many were refused (`refused`, for its
    figures) and when it last warned, so a disk that refuses for hours logs once a minute."""

    who: str  # the actor the warning names: "the outbox", "the event hub"
    refused: int = 0
    _warnings: TokenBucket = attrs.field(
        factory=lambda: TokenBucket(1 / STORAGE_LOG_INTERVAL_S, 1), init=False
    )

    async def until_written(
        self, attempt: Callable[[], Awaitable[T]], what: str, pause: Pause = trio.sleep
    ) -> T:
        """What `attempt()` returns, attempted again every STORAGE_RETRY_S (`pause`d) while
        the state database refuses it (`storage`); any other error is raised at once."""
        while True:
            try:
                return await attempt()
            except OpError as exc:
                if exc.code is not ErrorCode.STORAGE:
                    raise
                self.refused += 1
                if self._warnings.take(trio.current_time()):
                    log.warning(
                        f"the state database refuses writes: {self.who} tries again",
                        what=what,
                        error=exc.message,
                        refused=self.refused,
                        retry_s=STORAGE_RETRY_S,
                    )
            await pause(STORAGE_RETRY_S)
