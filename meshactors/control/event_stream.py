"""The event stream shared by JSON-lines subscribers and server-sent events: replay, gaps, lag.

Whatever writes the events (a JSON-lines connection, an SSE response) is an `EventSink`; the
replay-then-follow logic and the slow-consumer policy live here once.
"""

from __future__ import annotations

from typing import Any

import attrs

from meshactors.actors import Lagged, Subscriber
from meshactors.control.session import EventSink
from meshactors.event_hub import EventHub
from meshactors.store.events import MAX_REPLAY, Event, SinceResult
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.jsonlimits import MAX_JSON_INT

EVENT_CAPACITY = 4096  # live events queued for one subscriber before it lags
LAG_DISCONNECT_LIMIT = 65_536  # events a connection may miss in all before it is cut off


@attrs.define(eq=False)
class HubSubscription:
    """A connection's subscription to the event hub: its live queue, the last event id before
    the first one the queue gets, and how many events it was told it missed for good."""

    live: Subscriber[Event]
    subscribed_at: int
    lagged: int = 0  # events counted in its `lagged` notices (`events_lagged` in inspect)


class SlowConsumer(Exception):
    """The connection stopped reading and missed more than LAG_DISCONNECT_LIMIT events."""


def wire_event(event: Event) -> dict[str, Any]:
    """A logged event's fields as sent to clients: its id and time, then its data."""
    return {"event_id": event.event_id, "at_ms": event.at_ms, **event.data}


def check_since(since: int | None) -> None:
    """Refuse a replay start (`since`) no event id can be, whichever way it arrived (an SSE
    query or `Last-Event-ID` header does not pass the op table's params check)."""
    if since is not None and not 0 <= since <= MAX_JSON_INT:
        raise OpError(ErrorCode.INVALID_PARAMS, f"params.since: must be 0-{MAX_JSON_INT}")


async def cut_off_when_overflowed(source: Subscriber[Any]) -> None:
    """Raise SlowConsumer once `source` has missed more than its lag limit, even while the
    connection's writer is stuck on a peer that reads nothing."""
    await source.overflowed.wait()
    raise SlowConsumer(f"missed {source.skipped_total} events")


async def report_lag(marker: Lagged, source: Subscriber[Any], sink: EventSink) -> None:
    """Cut the sink off once `source` skipped more than LAG_DISCONNECT_LIMIT in all, else tell
    it how many items it missed (no notice for none: all of them reached it another way)."""
    if source.skipped_total > LAG_DISCONNECT_LIMIT:
        raise SlowConsumer(f"missed {source.skipped_total} events")
    if marker.skipped:
        await sink.send_frame("lagged", {"skipped": marker.skipped})


async def follow(stream: HubSubscription, after: int, sink: EventSink) -> None:
    """Write live events newer than `after` to the sink until the stream ends, telling it of
    those it missed for good. The hub numbers events one by one and offers each to every
    subscriber, so the ids the live queue lacks past `subscribed_at` are the ones it skipped;
    those up to `after` were replayed, so a `lagged` notice counts only the others (none: no
    notice)."""
    live = stream.live
    seen = stream.subscribed_at  # the newest id the queue delivered or is known to have skipped
    holes = missed = 0  # ids skipped below `seen` since the last marker; missed: past `after`
    async for item in live:
        if isinstance(item, Lagged):
            tail = item.skipped - holes  # skipped after every event delivered: the next ids
            missed += _past(after, seen, seen + tail)
            seen, holes = seen + tail, 0
            stream.lagged += missed
            await report_lag(Lagged(missed), live, sink)  # the limit counts replayed ones too
            missed = 0
            continue
        holes += item.event_id - seen - 1
        missed += _past(after, seen, item.event_id - 1)
        seen = item.event_id
        if item.event_id > after:
            await sink.send_event(item)


def _past(after: int, low: int, high: int) -> int:
    """How many of the ids from `low` (not included) to `high` are past `after`."""
    return max(high - max(low, after), 0)


async def replay_then_follow(
    hub: EventHub, sink: EventSink, stream: HubSubscription, since: int | None
) -> None:
    """Replay what the log holds after `since`, then follow live events. A hole is reported
    once, where it is: just before the first replayed event after the newest id the log lost
    (or after them all, when none is), so the events after the notice have no hole between
    them; a hole a later read of the same replay finds once that notice is sent adds nothing.

    `stream` must be subscribed first: without `since`, events after its `subscribed_at` are
    sent, even those published before this runs; a `since` past it (ids of an older log: the
    home was replaced) follows from it too.
    """
    after = stream.subscribed_at if since is None else min(since, stream.subscribed_at)
    if since is not None:
        start, hole, told = after, 0, False  # hole: the newest id lost, while its notice is due
        while True:
            result = await hub.replay(after, MAX_REPLAY)
            if result.gap and not told:
                hole = max(hole, result.lost_through)
            for event in result.events:
                if hole and event.event_id > hole:
                    await _tell_gap(sink, start, result)
                    hole, told = 0, True
                await sink.send_event(event)
                after = event.event_id
            if not result.more:
                break
        if hole:
            await _tell_gap(sink, start, result)
    await follow(stream, after, sink)


async def _tell_gap(sink: EventSink, since: int, result: SinceResult) -> None:
    """The `events_gap` notice of a replay from `since`: some events after it are lost."""
    await sink.send_frame("events_gap", {"since": since, "oldest_kept": result.oldest_kept})
