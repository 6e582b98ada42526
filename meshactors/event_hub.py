"""The `events` actor: numbers daemon events, fans them out live and logs them for replay;
others reach it only through its inbox."""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol

import attrs
import structlog
import trio

from meshactors.actors import (
    Actor,
    Broadcast,
    Inbox,
    Reply,
    Subscriber,
    cleanup_scope,
    take_queued,
)
from meshactors.broker.limits import TokenBucket
from meshactors.clock import wall_ms
from meshactors.store import events as event_log
from meshactors.store.actor import StoreActor
from meshactors.store.events import Event, SinceResult
from meshactors.store.retry import StorageRetry
from meshactors.wire.ipc import ErrorCode, OpError

log = structlog.get_logger("meshactors.events")

HUB_INBOX = 10_000  # events and requests waiting for the hub before new events are dropped
PERSIST_QUEUE = 10_000  # events waiting to be written to the log before new ones go unlogged
PERSIST_BATCH = 500  # events written per transaction
# Ids the log marks spent ahead of numbering: only a spent id is sent, so a restart (numbering
# on past every spent id) never hands out one that went live unlogged. Twice what the log queue
# and a batch hold, renewed at half: the renewal waits behind at most that many queued events,
# so a log that keeps up never holds numbering back.
SPEND_AHEAD = 2 * (PERSIST_QUEUE + PERSIST_BATCH)
# The event that tells subscribers (live and replaying) how many events the hub dropped unnumbered
# since the last one (`count`): numbered just before the first event it numbers after them.
EVENTS_DROPPED = "events_dropped"
HUB_ASK_TIMEOUT = 10.0  # seconds a subscribe or replay waits for the hub
LOG_WARNING_INTERVAL_S = 60.0  # at most one warning per this many seconds while writes fail


@attrs.frozen
class _Published:
    """An event to number, fan out and log, stamped when it was published."""

    kind: str
    data: dict[str, Any]
    at_ms: int


@attrs.frozen
class _Join:
    """Add a subscriber; the answer is the last event id it will not get live."""

    subscriber: Subscriber[Event]
    reply: Reply[int]


@attrs.frozen
class _Lost:
    """Events sent live that the log will never hold: how many, and the newest id (0: none).
    The log writer keeps the sum (see `EventHub._lose`)."""

    count: int = 0
    newest: int = 0

    def plus(self, other: _Lost) -> _Lost:
        """Both losses as one."""
        return _Lost(self.count + other.count, max(self.newest, other.newest))

    @classmethod
    def of(cls, events: Iterable[Event]) -> _Lost:
        """The loss of `events`."""
        ids = [event.event_id for event in events]
        return cls(len(ids), max(ids, default=0))


@attrs.frozen
class _Flush:
    """Answer once every event numbered so far is written to the log (or lost: the answer is
    the newest id lost, see `EventHub.flush`); `lost`: what the hub lost before it and has not
    handed to the log writer yet."""

    reply: Reply[int]
    lost: _Lost = _Lost()


@attrs.frozen
class _PublishLogged:
    """Events of one kind to number, fan out and log together (`EventHub.publish_logged`); the
    answer says whether the log holds them all."""

    kind: str
    datas: Sequence[dict[str, Any]]
    at_ms: int
    reply: Reply[bool]


@attrs.frozen
class _Logged:
    """Queued for the log writer just behind a `_PublishLogged`'s events, ids `first` on: it
    answers whether none of them was lost (written, not refused or cut off)."""

    first: int
    reply: Reply[bool]


@attrs.frozen
class _Spend:
    """Ask the log writer to mark ids up to `upto` spent: it sends `upto` on `marked` once the
    log holds the mark and closes it either way, so the hub, which alone keeps the mark, knows
    to ask again when the write failed."""

    upto: int
    marked: trio.MemorySendChannel[int]


_HubMessage = _Published | _Join | _Flush | _PublishLogged
_LogItem = Event | _Flush | _Spend | _Lost | _Logged


class EventPublisher(Protocol):
    """What an actor that only publishes needs of the hub."""

    def publish(self, kind: str, data: dict[str, Any]) -> None: ...


@attrs.define(eq=False)
class EventHub(Actor):
    """Assigns increasing event ids, publishes to live subscribers, writes the log in batches.
    Publishers and subscribers only put messages in its inbox; its own tasks do the rest."""

    kind: ClassVar[str] = "events"

    store: StoreActor
    inbox: Inbox[_HubMessage] = attrs.field(factory=lambda: Inbox(HUB_INBOX))
    broadcast: Broadcast[Event] = attrs.field(factory=Broadcast)
    last_event_id: int = 0
    # events numbered and sent live but not logged (the log queue was full, or the write
    # failed), as far as the log writer was told (see `figures`)
    unlogged: int = 0
    dropped: int = 0  # events the hub's task never numbered: no spent id was left for them
    # (the log is SPEND_AHEAD events behind or failing), or a stop cut them off
    _untold: int = 0  # of those, the ones no EVENTS_DROPPED event has told of yet
    # The newest id sent live but never logged (0: none this run), and the newest of them the
    # log has recorded as lost: a replay after an older id reports the hole (`events_gap`).
    # Only the log writer's task changes these and `unlogged` (or, once it is gone at a stop,
    # the hub's task, which then does the writing); the hub's task hands it what it loses.
    _lost_through: int = 0
    _lost_noted: int = 0
    _unqueued: _Lost = _Lost()  # lost by the hub's task (log queue full), not yet handed over
    _failed_writes: int = 0  # log writes that failed since the last warning
    _warnings: TokenBucket = attrs.field(
        factory=lambda: TokenBucket(1 / LOG_WARNING_INTERVAL_S, 1), init=False
    )
    _storage: StorageRetry = attrs.field(
        factory=lambda: StorageRetry("the event hub"), init=False
    )  # the start's numbering, made again while the database refuses it
    # The newest id the log marks spent (no id past it is sent), and where the log writer
    # answers the hub's _Spend while one is out: the hub's task alone reads and writes both.
    _spent: int = 0
    _marking: trio.MemoryReceiveChannel[int] | None = None
    _to_log: trio.MemorySendChannel[_LogItem] = attrs.field(init=False)
    _log_queue: trio.MemoryReceiveChannel[_LogItem] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._to_log, self._log_queue = trio.open_memory_channel[_LogItem](PERSIST_QUEUE)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Queue an event for the hub to number and publish; never waits (a full inbox
        refuses it and counts it, `Inbox.refused`)."""
        self.inbox.offer(_Published(kind, data, wall_ms()))

    async def subscribe(
        self, capacity: int, lag_limit: int | None = None
    ) -> tuple[Subscriber[Event], int]:
        """Live events through a bounded queue, from every event published after this call
        began; also returns the last event id before them (replay covers up to it). An ask
        that fails or is cancelled (its connection closed) closes the queue it made, so the
        hub, which may have added it already, forgets it when it next looks."""
        subscriber = Subscriber[Event](capacity, lag_limit)
        try:
            last: int = await self.inbox.ask(
                functools.partial(_Join, subscriber), timeout=HUB_ASK_TIMEOUT, what="subscribe"
            )
        except BaseException:
            subscriber.close()
            raise
        return subscriber, last

    async def flush(self, timeout: float = HUB_ASK_TIMEOUT) -> int:
        """Return once every event published before this call is numbered, sent live and in
        the log, or lost to it (a publisher of a large burst paces itself by it); the answer
        is the newest id this run sent live but never logged (0: none)."""
        lost: int = await self.inbox.ask(_Flush, timeout=timeout, what="flush the event log")
        return lost

    async def publish_logged(self, kind: str, datas: Sequence[dict[str, Any]]) -> bool:
        """Publish an event of `kind` for each of `datas`, waiting for room in the inbox (none
        is dropped there), and answer once the log has them: True when it holds every one,
        False when any went unlogged or unnumbered (a refused or cut-off write, a full log
        queue, no spent id left), for a publisher that must tell them again then."""
        logged: bool = await self.inbox.ask(
            functools.partial(_PublishLogged, kind, datas, wall_ms()),
            timeout=math.inf,
            what="publish and log events",
        )
        return logged

    async def replay(self, since: int, limit: int) -> SinceResult:
        """Logged events after `since`, oldest first, with a flag for a gap the log can't fill
        and the newest id in it (pruned, or never logged: the log still refuses to record
        that); every event published before this call is in the log by then, or lost to it."""
        lost = await self.flush()
        result: SinceResult = await self.store.call(
            functools.partial(event_log.since, event_id=since, limit=limit), what="replay events"
        )
        if since < lost:
            return attrs.evolve(result, gap=True, lost_through=max(result.lost_through, lost))
        return result

    def figures(self) -> dict[str, object]:
        return {
            "last_event_id": self.last_event_id,
            "subscribers": self.broadcast.subscriber_count,
            "log_queue": self._log_queue.statistics().current_buffer_used,
            "unlogged": self.unlogged + self._unqueued.count,
            "dropped": self.dropped + self.inbox.refused,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Waits for the store however long it takes (its own work: a client's subscribe or
        # replay asks the hub under a deadline of its own), and tries again every
        # STORAGE_RETRY_S while the database refuses the spent mark's write (a full disk,
        # another process's lock), so a slow or refusing store delays the start and never
        # crashes the hub, which would restart every root child after it.
        self.last_event_id = await self._storage.until_written(
            functools.partial(
                self.store.background_call,
                functools.partial(event_log.resume_numbering, ahead=SPEND_AHEAD),
                what="resume event numbering",
            ),
            "resume event numbering",
        )
        self._spent = self.last_event_id + SPEND_AHEAD
        self._marking = None  # a _Spend of an earlier run, if any, is no concern of this one
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_log)
                task_status.started()
                async for message in self.inbox.receiver:
                    await self._take(message)
        finally:
            self._lose(self._unqueued)  # the writer is gone: this task does its part now
            self._unqueued = _Lost()
            with cleanup_scope():
                await self._take_queued()
                await self._flush_queued()

    async def _take(self, message: _HubMessage) -> None:
        match message:
            case _Published(at_ms=at_ms) as published:
                self._tell_dropped(at_ms)
                if self._publish(published) is None:
                    self._drop()
            case _PublishLogged(kind=kind, datas=datas, at_ms=at_ms, reply=reply):
                self._tell_dropped(at_ms)
                first = self.last_event_id + 1
                queued = [self._publish(_Published(kind, data, at_ms)) for data in datas]
                self._drop(queued.count(None))
                if not all(queued):
                    reply.ok(False)
                    return
                try:  # just behind its events, so the writer answers once they are written
                    await self._to_log.send(_Logged(first, reply))
                except BaseException:
                    reply.drop()  # cut off waiting for room (the hub stops): ActorGone now
                    raise
            case _Join(subscriber=subscriber, reply=reply):
                self.broadcast.add(subscriber)
                reply.ok(self.last_event_id)
            case _Flush(reply=reply):
                try:  # behind every event numbered before it, with what was lost before it
                    await self._to_log.send(attrs.evolve(message, lost=self._unqueued))
                    self._unqueued = _Lost()
                except BaseException:
                    reply.drop()  # cut off waiting for room (the hub stops): ActorGone now
                    raise

    def _tell_dropped(self, at_ms: int) -> None:
        """Publish the EVENTS_DROPPED event of the events dropped since the last one, if any:
        where the hole is, before the first event numbered after it."""
        if self._untold:
            notice = _Published(EVENTS_DROPPED, {"count": self._untold}, at_ms)
            if self._publish(notice) is not None:
                self._untold = 0

    def _publish(self, published: _Published) -> bool | None:
        """Number `published`, send it live and queue it for the log: True once queued, False
        when the log queue was full (lost to the log), None when no spent id is left for it
        (its id could go out again after a kill)."""
        self._spend_ahead()
        if self.last_event_id >= self._spent:
            return None
        self.last_event_id += 1
        event = Event(self.last_event_id, published.kind, published.data, published.at_ms)
        self.broadcast.publish(event)
        return self._queue_for_log(event)

    def _drop(self, count: int = 1) -> None:
        """Count events never numbered, for the next EVENTS_DROPPED event to tell of."""
        self.dropped += count
        self._untold += count

    def _queue_for_log(self, event: Event) -> bool:
        """Queue `event` for the log writer, then what was lost before it; an event that
        finds the log queue full is lost (False), and a loss that finds it full is handed
        over later (with the next event, or flush, that finds room)."""
        try:
            self._to_log.send_nowait(event)
        except trio.WouldBlock:
            self._unqueued = self._unqueued.plus(_Lost.of([event]))
            return False
        if self._unqueued.count:
            try:
                self._to_log.send_nowait(self._unqueued)
                self._unqueued = _Lost()
            except trio.WouldBlock:
                pass
        return True

    def _spend_ahead(self) -> None:
        """Take the log writer's answer to the _Spend out, if it came, and ask for another
        SPEND_AHEAD ids once fewer than half are left, so numbering goes on once the log does
        (a full log queue takes no ask: the next event asks again)."""
        if self._marking is not None:
            try:
                self._spent = max(self._spent, self._marking.receive_nowait())
            except trio.WouldBlock:
                return  # not written yet
            except trio.EndOfChannel:
                pass  # the write failed, or a stop cut it off: ask again
            self._marking = None
        if self._spent - self.last_event_id >= SPEND_AHEAD // 2:
            return
        marked, marking = trio.open_memory_channel[int](1)
        try:
            self._to_log.send_nowait(_Spend(self.last_event_id + SPEND_AHEAD, marked))
        except trio.WouldBlock:
            return
        self._marking = marking

    async def _take_queued(self) -> None:
        """Number what was published before the hub stopped, so it is logged too. The log
        writer is gone by then, so a full log queue is written out here to make room: a
        flush waiting for room would wait out the cleanup budget, and the log with it. What
        the budget leaves untaken is settled: events counted dropped, askers told."""
        queued = collections.deque(take_queued(self.inbox.receiver, HUB_INBOX))
        try:
            while queued:
                room = self._log_queue.statistics()
                if room.current_buffer_used >= room.max_buffer_size:
                    await self._flush_queued()
                await self._take(queued[0])  # still queued if cut off: settled below
                queued.popleft()
        finally:
            self._settle_untaken(queued)

    async def _write_log(self) -> None:
        """The log writer: events in batches, each flush answered once what precedes it is."""
        while True:
            first = await self._log_queue.receive()
            await self._write([first, *take_queued(self._log_queue, PERSIST_BATCH - 1)])

    async def _flush_queued(self) -> None:
        """Write what the log queue holds (the writer is gone); what the cleanup budget leaves
        unwritten is counted unlogged, its flushes told the hub is gone."""
        try:
            while batch := take_queued(self._log_queue, PERSIST_BATCH):
                await self._write(batch)
        finally:
            self._settle_untaken(take_queued(self._log_queue, PERSIST_QUEUE))

    def _settle_untaken(self, untaken: Iterable[_HubMessage | _LogItem]) -> None:
        """Account for what a stop left undone: an event not numbered is dropped, one not
        logged is unlogged, and every asker hears ActorGone at once."""
        for item in untaken:
            match item:
                case _Published():
                    self._drop()
                case _PublishLogged(datas=datas, reply=reply):
                    self._drop(len(datas))
                    reply.drop()
                case Event() as event:
                    self._lose(_Lost.of([event]))
                case _Lost() as lost:
                    self._lose(lost)
                case _Join(reply=reply):
                    reply.drop()
                case _Flush(reply=reply, lost=lost):
                    self._lose(lost)
                    reply.drop()
                case _Logged(reply=reply):
                    reply.drop()

    def _lose(self, lost: _Lost) -> None:
        """Count events sent live that the log will never hold, and mark the newest, so a
        replay across them reports the hole (`events_gap`), as one across pruned events does.
        The log writer's alone (see `_lost_through`)."""
        self.unlogged += lost.count
        self._lost_through = max(self._lost_through, lost.newest)

    async def _write(self, batch: list[_LogItem]) -> None:
        """Log a batch's events, the spent mark the hub asked for and the newest id lost since
        the last write (with what the hub handed over lost in it), then answer its flushes,
        `_Logged`s and spends; a write cut off (the hub stops) drops them, so their askers
        hear at once."""
        events = [item for item in batch if isinstance(item, Event)]
        spends = [item for item in batch if isinstance(item, _Spend)]
        lost_before = self._lost_through
        for item in batch:  # what the hub lost, handed over: recorded by this write
            match item:
                case (_Lost() as handed) | _Flush(lost=handed):
                    self._lose(handed)
        spend_to = max((spend.upto for spend in spends), default=None)
        lost = self._lost_through if self._lost_through > self._lost_noted else None
        try:
            try:
                if events or spend_to is not None or lost is not None:
                    # No deadline: a write the store has taken still happens after one runs
                    # out (a loop frozen past it), so only the store's own answer says whether
                    # it did. A stopped store drops the call unrun: ActorGone, events unlogged.
                    await self.store.background_call(
                        functools.partial(
                            event_log.append_batch, batch=events, spend_to=spend_to, lost=lost
                        ),
                        what="log events",
                    )
                    if lost is not None:
                        self._lost_noted = lost
                    for spend in spends:
                        spend.marked.send_nowait(spend.upto)
                written = True
            except Exception as exc:
                self._lose(_Lost.of(events))
                self._warn(exc)
                written = False
            self._answer_logged(batch, lost_before, written)
            for item in batch:
                if isinstance(item, _Flush):
                    item.reply.ok(self._lost_through)
        finally:
            for spend in spends:
                spend.marked.close()  # answered or not: the hub asks again if not
            for item in batch:
                if isinstance(item, _Flush | _Logged):
                    item.reply.drop()  # harmless after an answer

    @staticmethod
    def _answer_logged(batch: list[_LogItem], lost_before: int, written: bool) -> None:
        """Answer each `_Logged` of a batch: its events (ids `first` to just before it) are in
        the log unless one was lost, so unless the newest id lost before it (in an earlier
        write, handed over by the hub, or in this batch's write if it failed) is `first` or
        newer. Only ids before it count: what follows it in the batch may be lost alone."""
        newest = lost_before
        for item in batch:
            match item:
                case Event(event_id=event_id) if not written:
                    newest = max(newest, event_id)
                case (_Lost() as handed) | _Flush(lost=handed):
                    newest = max(newest, handed.newest)
                case _Logged(first=first, reply=reply):
                    reply.ok(newest < first)

    def _warn(self, exc: Exception) -> None:
        """Log a failed write at most once per LOG_WARNING_INTERVAL_S, with the failures since
        the last warning: a full disk fails every write, and must not flood the log too."""
        self._failed_writes += 1
        if not self._warnings.take(trio.current_time()):
            return
        refused = isinstance(exc, OpError) and exc.code is ErrorCode.STORAGE
        log.warning(
            "could not log events: a replay across them reports events_gap",
            error=str(exc),
            failed_writes=self._failed_writes,
            unlogged=self.unlogged,
            exc_info=None if refused else exc,  # a refusal says it all; anything else: a bug
        )
        self._failed_writes = 0
