"""`GET /health` on the broker's listen port: answered with h11 before trio-websocket sees the
connection, so `curl http://HOST:PORT/health` needs no WebSocket client. A query string is
ignored (a cache-buster), HEAD is answered as GET without the body, and any other method on
/health gets a 405 naming those two. A request for any other path is handed on to the
WebSocket handshake with the bytes already read put back in front."""

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

import attrs
import h11
import trio

BROKER_HEALTH_PATH: Final = b"/health"
MAX_HEALTH_REQUEST_BYTES: Final = 8192  # a request head we read before deciding; more is not ours
HEALTH_METHODS: Final = ("GET", "HEAD")  # what /health answers; other methods get a 405
_OTHER_METHODS: Final = (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
# how a request for /health (with or without a query) begins, whatever its method
_HEALTH_STARTS: Final = tuple(
    method + b" " + BROKER_HEALTH_PATH + end
    for method in (*(name.encode() for name in HEALTH_METHODS), *_OTHER_METHODS)
    for end in (b" ", b"?")
)
_NOT_ALLOWED: Final = b'{"error":"/health answers GET and HEAD only"}\n'


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
    """Answer a request for /health (`GET`: health() as JSON) and return None; for any other
    request return the stream to hand on, its head bytes put back."""
    head = b""
    # read only while the bytes could still begin a health request: anything else (a WebSocket
    # upgrade, a TLS hello that waits for our answer) is handed on at its first bytes
    while _could_become_health(head):
        chunk = await stream.receive_some(MAX_HEALTH_REQUEST_BYTES)
        if not chunk:
            break
        head += chunk
    if not head.startswith(_HEALTH_STARTS):
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
    method = event.method.decode("ascii")
    headers = [("content-type", "application/json"), ("connection", "close")]
    if method in HEALTH_METHODS:
        status, body = HTTPStatus.OK, json.dumps(health(), separators=(",", ":")).encode() + b"\n"
    else:
        status, body = HTTPStatus.METHOD_NOT_ALLOWED, _NOT_ALLOWED
        headers.append(("allow", ", ".join(HEALTH_METHODS)))
    headers.append(("content-length", str(len(body))))
    answer: list[h11.Event] = [
        h11.Response(status_code=status, headers=headers, reason=status.phrase.encode())
    ]
    if method != "HEAD":  # (h11 knows a HEAD answer has no body: it would refuse one)
        answer.append(h11.Data(data=body))
    answer.append(h11.EndOfMessage())
    await stream.send_all(b"".join(http.send(part) or b"" for part in answer))
    return None


def _could_become_health(head: bytes) -> bool:
    """Whether `head` is too short to tell, and could still begin a request for /health."""
    return any(len(head) < len(start) and start.startswith(head) for start in _HEALTH_STARTS)
