"""Plain HTTP on the broker's listen port, answered with h11 before trio-websocket sees the
connection. `GET /health`, so that `curl http://HOST:PORT/health` needs no WebSocket client: a
query string is ignored (a cache-buster), HEAD is answered as GET without the body, and any
other method on /health gets a 405 naming those two. A request for the WebSocket path that
asks no WebSocket upgrade (a browser, `curl`) gets a 426 saying what the path wants. Any other
request is handed on to the WebSocket handshake with the bytes already read put back in
front."""

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Final, Literal

import attrs
import h11
import trio

from meshactors.wire.broker import BROKER_PATH

BROKER_HEALTH_PATH: Final = b"/health"
MAX_HEALTH_REQUEST_BYTES: Final = 8192  # a request head we read before deciding; more is not ours
HEALTH_METHODS: Final = ("GET", "HEAD")  # what /health answers; other methods get a 405
_OTHER_METHODS: Final = (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
_METHODS: Final = (*(name.encode() for name in HEALTH_METHODS), *_OTHER_METHODS)
# how a request for /health (with or without a query) begins, whatever its method
_HEALTH_STARTS: Final = tuple(
    method + b" " + BROKER_HEALTH_PATH + end for method in _METHODS for end in (b" ", b"?")
)
# how a request for the WebSocket path begins, whatever its method: read whole, to tell
# whether it asks the upgrade
_WEBSOCKET_STARTS: Final = tuple(method + b" " + BROKER_PATH.encode() + b" " for method in _METHODS)
_NOT_ALLOWED: Final = b'{"error":"/health answers GET and HEAD only"}\n'
# what a request for the WebSocket path without the upgrade is told
NOT_WEBSOCKET: Final = (
    f"{BROKER_PATH} is the meshactors broker's WebSocket endpoint: connect with a WebSocket"
    f" client (GET {BROKER_PATH} with Upgrade: websocket, Connection: Upgrade,"
    " Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key); plain HTTP is answered at /health\n"
).encode()
# what a connection answered here is counted as (a broken request for /health counts too)
Answered = Literal["health_requests", "rejected_not_websocket"]


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


async def answer_plain_http(
    stream: trio.abc.Stream, health: Callable[[], dict[str, object]]
) -> PrefixedStream | Answered:
    """Answer a request for /health (`GET`: health() as JSON), or one for the WebSocket path
    without the upgrade, and say which; for any other request return the stream to hand on,
    its head bytes put back."""
    head = b""
    # read only while the bytes could still begin a request we may answer: anything else (a
    # request for another path, a TLS hello that waits for our answer) is handed on at its
    # first bytes
    while _could_become_ours(head):
        chunk = await stream.receive_some(MAX_HEALTH_REQUEST_BYTES)
        if not chunk:
            break
        head += chunk
    if not head.startswith(_HEALTH_STARTS + _WEBSOCKET_STARTS):
        return PrefixedStream(stream, head)
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEALTH_REQUEST_BYTES)
    http.receive_data(head)
    request: h11.Request | None = None  # None: a broken request
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError:
            break
        if isinstance(event, h11.Request):
            request = event
            break
        if event is not h11.NEED_DATA:
            break
        chunk = await stream.receive_some(MAX_HEALTH_REQUEST_BYTES)
        if not chunk:
            break
        head += chunk
        http.receive_data(bytes(chunk))
    if not head.startswith(_HEALTH_STARTS):  # the WebSocket path
        if request is None or _asks_websocket(request):  # the handshake's to answer, or end
            return PrefixedStream(stream, head)
        text = [("content-type", "text/plain; charset=utf-8"), ("upgrade", "websocket")]
        await _answer(stream, http, request, HTTPStatus.UPGRADE_REQUIRED, NOT_WEBSOCKET, text)
        return "rejected_not_websocket"
    if request is not None:  # a broken one is closed without an answer
        await _answer_health(stream, http, request, health)
    return "health_requests"


async def _answer_health(
    stream: trio.abc.Stream,
    http: h11.Connection,
    request: h11.Request,
    health: Callable[[], dict[str, object]],
) -> None:
    """Answer a request for /health: health() as JSON, or 405 to a method other than GET and
    HEAD."""
    json_body = [("content-type", "application/json")]
    if request.method.decode("ascii") in HEALTH_METHODS:
        body = json.dumps(health(), separators=(",", ":")).encode() + b"\n"
        await _answer(stream, http, request, HTTPStatus.OK, body, json_body)
    else:
        allow = [*json_body, ("allow", ", ".join(HEALTH_METHODS))]
        await _answer(stream, http, request, HTTPStatus.METHOD_NOT_ALLOWED, _NOT_ALLOWED, allow)


async def _answer(
    stream: trio.abc.Stream,
    http: h11.Connection,
    request: h11.Request,
    status: HTTPStatus,
    body: bytes,
    headers: list[tuple[str, str]],
) -> None:
    """Send one answer with `headers` (its content-type among them); the connection is closed
    after it."""
    headers = [*headers, ("connection", "close"), ("content-length", str(len(body)))]
    answer: list[h11.Event] = [
        h11.Response(status_code=status, headers=headers, reason=status.phrase.encode())
    ]
    if request.method != b"HEAD":  # (h11 knows a HEAD answer has no body: it would refuse one)
        answer.append(h11.Data(data=body))
    answer.append(h11.EndOfMessage())
    await stream.send_all(b"".join(http.send(part) or b"" for part in answer))


def _asks_websocket(request: h11.Request) -> bool:
    """Whether `request` asks the WebSocket upgrade (the handshake checks the rest of it)."""
    asked = (value for name, value in request.headers if name == b"upgrade")
    return any(b"websocket" in map(bytes.strip, value.lower().split(b",")) for value in asked)


def _could_become_ours(head: bytes) -> bool:
    """Whether `head` is too short to tell, and could still begin a request we may answer."""
    return any(
        len(head) < len(start) and start.startswith(head)
        for start in _HEALTH_STARTS + _WEBSOCKET_STARTS
    )
