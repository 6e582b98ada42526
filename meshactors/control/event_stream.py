"""The event stream shared by JSON-lines subscribers and server-sent events: replay, gaps, lag.

Whatever writes the events (a JSON-lines connection, an SSE response) is an `EventSink`; the
replay-then-follow logic and the slow-consumer policy live here once.
"""

from __future__ import annotations

from typing import Any

from meshactors.actors import Lagged, Subscriber
from meshactors.control.session import EventSink
from meshactors.event_hub import EventHub
from meshactors.store.events import MAX_REPLAY, Event
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.jsonlimits import MAX_JSON_INT

EVENT_CAPACITY = 4096  # live events queued for one subscriber before it lags
LAG_DISCONNECT_LIMIT = 65_536  # events a connection may miss in all before it is cut off


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
    """Tell the sink how many items it missed, or cut it off past LAG_DISCONNECT_LIMIT."""
    if source.skipped_total > LAG_DISCONNECT_LIMIT:
        raise SlowConsumer(f"missed {source.skipped_total} events")
    await sink.send_frame("lagged", {"skipped": marker.skipped})


async def follow(live: Subscriber[Event], after: int, sink: EventSink) -> None:
    """Write live events newer than `after` to the sink, with lag markers, until it ends."""
    async for item in live:
        if isinstance(item, Lagged):
            await report_lag(item, live, sink)
        elif item.event_id > after:
            await sink.send_event(item)


async def replay_then_follow(
    hub: EventHub, sink: EventSink, live: Subscriber[Event], since: int | None, subscribed_at: int
) -> None:
    """Replay what the log holds after `since` (reporting any hole), then follow live events.

    `live` must be subscribed first, and `subscribed_at` the last event id its subscribe returned:
    without `since`, events from then on are sent, even those published before this runs; a
    `since` past it (ids of an older log: the home was replaced) follows from it too.
    """
    after = subscribed_at if since is None else min(since, subscribed_at)
    if since is not None:
        while True:
            result = await hub.replay(after, MAX_REPLAY)
            if result.gap:
                await sink.send_frame(
                    "events_gap", {"since": after, "oldest_kept": result.oldest_kept}
                )
            for event in result.events:
                await sink.send_event(event)
                after = event.event_id
            if not result.more:
                break
    await sink.forward_broadcast(live, after)
