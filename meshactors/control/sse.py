"""`GET /v1/events` as server-sent events: replay after Last-Event-ID, then live, with keepalives.

Each logged event is `id: <event_id>` / `event: <kind>` / `data: <json>`; notices that are not
logged (`events_gap`, `lagged`) carry no `id:`, so a reconnect resumes from the last real event.
A reader that stops reading is treated as over JSON lines: its writes wait (no time limit),
live events that find its queue full are skipped and told as `lagged` once it reads again,
and past LAG_DISCONNECT_LIMIT missed events it is cut off.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from meshactors.actors import cleanup_scope
from meshactors.control.event_stream import (
    EVENT_CAPACITY,
    LAG_DISCONNECT_LIMIT,
    HubSubscription,
    SlowConsumer,
    cut_off_when_overflowed,
    replay_then_follow,
    wire_event,
)
from meshactors.control.session import Session
from meshactors.store.events import Event

KEEPALIVE_INTERVAL = 15.0  # seconds between `: keepalive` comments, so proxies and peers see life
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),
)


def sse_message(kind: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One server-sent event; compact JSON never holds a newline, so one `data:` line suffices."""
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines += [f"event: {kind}", "data: " + json.dumps(data, separators=(",", ":"))]
    return ("\n".join(lines) + "\n\n").encode()


class EventResponse(Protocol):
    """The HTTP connection an event stream answers on: its one writing path and its input."""

    async def start_events(self, headers: tuple[tuple[str, str], ...]) -> None:
        """Write the response head."""

    async def write_body(self, data: bytes) -> None:
        """Write part of the response body, serialised by the connection; it waits as long
        as the client reads nothing (the stream's lag bounds it, not time)."""

    async def until_hangup(self) -> None:
        """Return once the client is gone (closed its connection)."""

    async def end_events(self) -> None:
        """End the response whole (its last chunk), unless the connection failed already."""


@attrs.define(eq=False)
class SseSink:
    """An EventSink writing server-sent events through the connection's writing path."""

    write: Callable[[bytes], Awaitable[None]]

    async def send_event(self, event: Event) -> None:
        """Write one logged event, with its id."""
        await self.write(sse_message(event.kind, wire_event(event), event.event_id))

    async def send_frame(self, kind: str, data: dict[str, Any]) -> None:
        """Write one unlogged notice (no id)."""
        await self.write(sse_message(kind, data))

    async def keepalive(self, interval: float) -> None:
        """Write a comment every `interval` seconds, forever."""
        while True:
            await trio.sleep(interval)
            await self.write(KEEPALIVE)


async def serve_events(
    response: EventResponse,
    session: Session,
    since: int | None,
    *,
    keepalive: float = KEEPALIVE_INTERVAL,
) -> None:
    """Answer with an event stream until the client hangs up or the hub stops; the session
    shows it as its connection's (`events`, `events_lagged` in inspect). Unless the client
    hung up, the response ends whole (also when the daemon stops), so a client tells a
    stream the daemon ended from one cut off; one that missed more than LAG_DISCONNECT_LIMIT
    events raises SlowConsumer, its body cut off without its last chunk, so it resumes."""
    hub = session.services.events
    # before the replay: no hole
    live, subscribed_at = await hub.subscribe(EVENT_CAPACITY, LAG_DISCONNECT_LIMIT)
    with live:
        stream = session.event_stream = HubSubscription(live, subscribed_at)
        session.events_subscribed = True
        sink = SseSink(response.write_body)
        hung_up = cut_off = False
        try:
            await response.start_events(SSE_HEADERS)
            async with trio.open_nursery() as nursery:

                async def stream_events() -> None:
                    await replay_then_follow(hub, sink, stream, since)
                    nursery.cancel_scope.cancel()  # the hub stopped: end the response

                nursery.start_soon(sink.keepalive, keepalive)
                nursery.start_soon(cut_off_when_overflowed, live)  # even while a write waits
                nursery.start_soon(stream_events)
                await response.until_hangup()
                hung_up = True
                nursery.cancel_scope.cancel()
        except* SlowConsumer:
            cut_off = True  # whether or not a write was stuck: no last chunk may follow
            raise
        finally:
            if not (hung_up or cut_off):  # the hub or the daemon stopped (or a write failed)
                with cleanup_scope():
                    await response.end_events()
