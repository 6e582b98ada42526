"""The `events` actor: numbers daemon events, fans them out live and logs them for replay."""

from __future__ import annotations

import functools
import time
from typing import Any, ClassVar

import attrs
import structlog
import trio

from meshactors.actors import Actor, Broadcast, Subscriber, cleanup_scope
from meshactors.store import events as event_log
from meshactors.store.actor import StoreActor
from meshactors.store.events import Event, SinceResult

log = structlog.get_logger("meshactors.events")

PERSIST_QUEUE = 10_000  # events waiting to be written to the log before new ones go unlogged
PERSIST_BATCH = 500  # events written per transaction


@attrs.define(eq=False)
class EventHub(Actor):
    """Assigns increasing event ids, publishes to live subscribers, writes the log in batches."""

    kind: ClassVar[str] = "events"

    store: StoreActor
    broadcast: Broadcast[Event] = attrs.field(factory=Broadcast)
    last_event_id: int = 0
    unlogged: int = 0
    _to_log: trio.MemorySendChannel[Event] = attrs.field(init=False)
    _log_queue: trio.MemoryReceiveChannel[Event] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._to_log, self._log_queue = trio.open_memory_channel[Event](PERSIST_QUEUE)

    def inbox_statistics(self) -> trio.MemoryChannelStatistics:
        """The queue of events waiting to be written to the log."""
        return self._log_queue.statistics()

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        """Number and publish an event; never waits."""
        self.last_event_id += 1
        event = Event(self.last_event_id, kind, data, int(time.time() * 1000))
        self.broadcast.publish(event)
        try:
            self._to_log.send_nowait(event)
        except trio.WouldBlock:
            self.unlogged += 1
        return event

    def subscribe(self, capacity: int, lag_limit: int | None = None) -> Subscriber[Event]:
        """Live events from now on, through a bounded queue."""
        return self.broadcast.subscribe(capacity, lag_limit)

    async def replay(self, since: int, limit: int) -> SinceResult:
        """Logged events after `since`, oldest first, with a flag for a gap the log can't fill."""
        await self._flush_queued()
        return await self.store.call(
            functools.partial(event_log.since, event_id=since, limit=limit), what="replay events"
        )

    def figures(self) -> dict[str, object]:
        return {
            "last_event_id": self.last_event_id,
            "subscribers": self.broadcast.subscriber_count,
            "log_queue": self._log_queue.statistics().current_buffer_used,
            "unlogged": self.unlogged,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_event_id = max(
            self.last_event_id, await self.store.call(event_log.last_event_id, what="last event")
        )
        task_status.started()
        try:
            while True:
                first = await self._log_queue.receive()
                await self._write([first, *self._drain(PERSIST_BATCH - 1)])
        finally:
            with cleanup_scope():
                await self._flush_queued()

    async def _flush_queued(self) -> None:
        while batch := self._drain(PERSIST_BATCH):
            await self._write(batch)

    def _drain(self, limit: int) -> list[Event]:
        batch: list[Event] = []
        while len(batch) < limit:
            try:
                batch.append(self._log_queue.receive_nowait())
            except trio.WouldBlock:
                break
        return batch

    async def _write(self, batch: list[Event]) -> None:
        try:
            await self.store.call(
                functools.partial(event_log.append_batch, batch=batch), what="log events"
            )
        except Exception:
            self.unlogged += len(batch)
            log.exception("could not log events", count=len(batch))
