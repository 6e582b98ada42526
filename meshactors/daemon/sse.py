"""`GET /v1/events` as server-sent events: replay after Last-Event-ID, then live, with keepalives.

Each logged event is `id: <event_id>` / `event: <kind>` / `data: <json>`; notices that are not
logged (`events_gap`, `lagged`) carry no `id:`, so a reconnect resumes from the last real event.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from meshactors.actors import Subscriber
from meshactors.daemon.event_stream import (
    EVENT_CAPACITY,
    follow,
    replay_then_follow,
    wire_event,
)
from meshactors.daemon.events import EventHub
from meshactors.daemon.http_parse import RECEIVE_CHUNK
from meshactors.daemon.http_response import WRITE_TIMEOUT, encode_head
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


@attrs.define(eq=False)
class SseSink:
    """An EventSink writing server-sent events; writes are serialised and time-bounded."""

    stream: trio.abc.SendStream
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def write(self, data: bytes) -> None:
        """Write raw bytes, one writer at a time, dropping a client that stopped reading."""
        async with self._lock:
            with trio.fail_after(WRITE_TIMEOUT):
                await self.stream.send_all(data)

    async def forward_broadcast(self, events: Subscriber[Event], after: int) -> None:
        """Write live events newer than `after` until the subscription ends."""
        await follow(events, after, self)

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
    stream: trio.abc.Stream,
    hub: EventHub,
    since: int | None,
    *,
    keepalive: float = KEEPALIVE_INTERVAL,
) -> None:
    """Answer with an event stream until the client hangs up or the hub stops."""
    with hub.subscribe(EVENT_CAPACITY) as live:  # before the replay, so nothing falls between
        subscribed_at = hub.last_event_id
        sink = SseSink(stream)
        await sink.write(encode_head(200, SSE_HEADERS, close=True))
        async with trio.open_nursery() as nursery:

            async def stream_events() -> None:
                await replay_then_follow(hub, sink, live, since, subscribed_at)
                nursery.cancel_scope.cancel()  # the hub stopped: end the response

            nursery.start_soon(sink.keepalive, keepalive)
            nursery.start_soon(stream_events)
            await _until_hangup(stream)
            nursery.cancel_scope.cancel()


async def _until_hangup(stream: trio.abc.ReceiveStream) -> None:
    """Read and drop whatever the client sends until it closes its side."""
    while await stream.receive_some(RECEIVE_CHUNK):
        pass
