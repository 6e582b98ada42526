"""`GET /health` on the broker's listen port: answered with h11 before trio-websocket sees the
connection, so `curl http://HOST:PORT/health` needs no WebSocket client. Any other request is
handed on to the WebSocket handshake with the bytes already read put back in front."""

import json
from collections.abc import Callable
from typing import Final

import attrs
import h11
import trio

BROKER_HEALTH_PATH: Final = b"/health"
MAX_HEALTH_REQUEST_BYTES: Final = 8192  # a request head we read before deciding; more is not ours
_HEALTH_LINE: Final = b"GET " + BROKER_HEALTH_PATH + b" "  # a health request's first line


@attrs.define(eq=False)
class ForwardingStream(trio.abc.Stream):
    """A stream that hands everything on to `stream`: the base of the wrappers that change
    only how a connection is read before trio-websocket sees it."""

    stream: trio.abc.Stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@attrs.define(eq=False)
class PrefixedStream(ForwardingStream):
    """A stream that first returns the bytes already read from `stream`, then reads on."""

    prefix: bytes

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.prefix:
            size = len(self.prefix) if max_bytes is None else max_bytes
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)


async def answer_health(
    stream: trio.abc.Stream, health: Callable[[], dict[str, object]]
) -> PrefixedStream | None:
    """Answer a `GET /health` with health() as JSON and return None; for any other request
    return the stream to hand on, its head bytes put back."""
    head = b""
    # read only while the bytes could still begin a health request: anything else (a WebSocket
    # upgrade, a TLS hello that waits for our answer) is handed on at its first bytes
    while len(head) < len(_HEALTH_LINE) and _HEALTH_LINE.startswith(head):
        chunk = await stream.receive_some(MAX_HEALTH_REQUEST_BYTES)
        if not chunk:
            break
        head += chunk
    if not head.startswith(_HEALTH_LINE):
        return PrefixedStream(stream, head)
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEALTH_REQUEST_BYTES)
    http.receive_data(head)
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError:
            return None  # a broken request: close without answering
        if isinstance(event, h11.Request):
            break
        if event is not h11.NEED_DATA:
            return None  # a broken request: close without answering
        chunk = await stream.receive_some(MAX_HEALTH_REQUEST_BYTES)
        if not chunk:
            return None
        http.receive_data(bytes(chunk))
    body = json.dumps(health(), separators=(",", ":")).encode() + b"\n"
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    headers.append(("connection", "close"))
    await stream.send_all(http.send(h11.Response(status_code=200, headers=headers)) or b"")
    await stream.send_all(http.send(h11.Data(data=body)) or b"")
    await stream.send_all(http.send(h11.EndOfMessage()) or b"")
    return None
