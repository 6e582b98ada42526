"""Plain HTTP on the broker's listen port, answered with h11 before trio-websocket sees the
connection, so that no request gets wsproto's empty 400. `GET /health`, so that
`curl http://HOST:PORT/health` needs no WebSocket client: a query string is ignored (a
cache-buster), HEAD is answered as GET without the body, and any other method on /health gets a
405 naming those two. On the WebSocket path, a method other than GET and HEAD gets a 405 naming
those two too, a request that asks no WebSocket upgrade (a browser, `curl`) a 426 saying what
the path wants, and an upgrade wsproto would refuse the status wsproto gives it with a line
saying why. Any other path is a 404, a request h11 cannot read a 400 (431 for a head too long).
Only an upgrade the handshake will take is handed on to it, with the bytes already read put back
in front."""

import json
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Final, Literal

import attrs
import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import RejectConnection
from wsproto.utilities import RemoteProtocolError

from meshactors.wire.broker import BROKER_PATH

BROKER_HEALTH_PATH: Final = b"/health"
# a request head the broker reads before answering it or handing it to the handshake: h11's
# default, what trio-websocket's handshake reads; a longer one is answered 431
MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
HEALTH_METHODS: Final = ("GET", "HEAD")  # what /health answers; other methods get a 405
_NOT_ALLOWED: Final = b'{"error":"/health answers GET and HEAD only"}\n'
# what the WebSocket path answers without a 405 (HEAD: the 426's head, as for GET); its Allow
WEBSOCKET_PATH_METHODS: Final = ("GET", "HEAD")
_TEXT: Final = (("content-type", "text/plain; charset=utf-8"),)
# what the WebSocket path's upgrade must have (wsproto's checks), said in the answers below
_UPGRADE_NEEDS: Final = (
    f"GET {BROKER_PATH} with Upgrade: websocket, Connection: Upgrade,"
    " Sec-WebSocket-Version: 13, a Sec-WebSocket-Key and a Host"
)
# what a request for the WebSocket path without the upgrade is told
NOT_WEBSOCKET: Final = (
    f"{BROKER_PATH} is the meshactors broker's WebSocket endpoint: connect with a WebSocket"
    f" client ({_UPGRADE_NEEDS}); plain HTTP is answered at /health\n"
).encode()
# what a request for the WebSocket path with another method is told
WEBSOCKET_METHOD_NOT_ALLOWED: Final = (
    f"{BROKER_PATH} is the meshactors broker's WebSocket endpoint: it takes {_UPGRADE_NEEDS}\n"
).encode()
# what a request for any other path is told
NOT_FOUND: Final = (
    f"not found: the meshactors broker answers a WebSocket upgrade at {BROKER_PATH} and plain"
    " HTTP at /health\n"
).encode()
# what a request h11 cannot read is told
BAD_REQUEST: Final = (
    b"not an HTTP/1.1 request the meshactors broker can read: a request line (METHOD TARGET"
    b" HTTP/1.1), header lines with a Host, and an empty line\n"
)
# why an upgrade with a header wsproto decodes that is not text is refused
UNDECODABLE_UPGRADE: Final = (
    "a Connection, Sec-WebSocket-Protocol or Sec-WebSocket-Extensions value that is not ASCII,"
    " or a Host that is not a host name"
)
HEAD_TOO_LONG: Final = f"the request head is longer than {MAX_REQUEST_HEAD_BYTES} bytes\n".encode()
# what a connection answered here is counted as (rejected_bad_request: a request h11 cannot
# read, or an upgrade wsproto would refuse)
Answered = Literal[
    "health_requests", "rejected_not_websocket", "rejected_path", "rejected_bad_request"
]


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
) -> PrefixedStream | Answered | None:
    """Read the request head and answer it, saying how it was counted, unless it is an upgrade
    the handshake will take: then return the stream to hand on, its head bytes put back. None
    when the client left before it sent a byte."""
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    head = b""
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError as broken:  # h11 allows the answer after it
            too_long = broken.error_status_hint == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            status = HTTPStatus(broken.error_status_hint)
            await _answer(stream, http, None, status, HEAD_TOO_LONG if too_long else BAD_REQUEST)
            return "rejected_bad_request"
        if isinstance(event, h11.Request):
            break
        if isinstance(event, h11.ConnectionClosed):
            return None  # nothing sent: a port scanner's connect, say
        # NEED_DATA: read on, to one byte past the cap at most (h11 refuses a head past it
        # only while it is incomplete); b"" is the end
        chunk = await stream.receive_some(MAX_REQUEST_HEAD_BYTES + 1 - len(head))
        head += chunk
        http.receive_data(bytes(chunk))
    if event.target.partition(b"?")[0] == BROKER_HEALTH_PATH:
        await _answer_health(stream, http, event, health)
        return "health_requests"
    if event.target != BROKER_PATH.encode():
        await _answer(stream, http, event.method, HTTPStatus.NOT_FOUND, NOT_FOUND)
        return "rejected_path"
    if event.method.decode("ascii") not in WEBSOCKET_PATH_METHODS:
        allow = [*_TEXT, ("allow", ", ".join(WEBSOCKET_PATH_METHODS))]
        status = HTTPStatus.METHOD_NOT_ALLOWED
        await _answer(stream, http, event.method, status, WEBSOCKET_METHOD_NOT_ALLOWED, allow)
        return "rejected_not_websocket"
    if not _asks_websocket(event):
        text = [*_TEXT, ("upgrade", "websocket")]
        await _answer(stream, http, event.method, HTTPStatus.UPGRADE_REQUIRED, NOT_WEBSOCKET, text)
        return "rejected_not_websocket"
    refused = _upgrade_refused(head)
    if refused is None:
        return PrefixedStream(stream, head)
    status, headers, why = refused
    body = f"{BROKER_PATH} cannot take this WebSocket upgrade: {why} (it takes {_UPGRADE_NEEDS})\n"
    await _answer(stream, http, event.method, status, body.encode(), [*_TEXT, *headers])
    return "rejected_bad_request"


def _upgrade_refused(head: bytes) -> tuple[HTTPStatus, list[tuple[str, str]], str] | None:
    """How wsproto refuses the upgrade request in `head`: the status and headers of its event
    hint (a 426 names the version it takes), and why; None when the handshake will take it.
    (trio-websocket would send the hint, an empty 400, and close; and a header wsproto cannot
    decode would fail its reader.)"""
    try:
        WSConnection(ConnectionType.SERVER).receive_data(head)
    except RemoteProtocolError as refused:
        hint = refused.event_hint
        if not isinstance(hint, RejectConnection):
            return HTTPStatus.BAD_REQUEST, [], str(refused)
        headers = [(name.decode(), value.decode()) for name, value in hint.headers]
        return HTTPStatus(hint.status_code), headers, str(refused)
    except UnicodeError:  # wsproto decodes some headers itself, and fails on what is not text
        return HTTPStatus.BAD_REQUEST, [], UNDECODABLE_UPGRADE
    return None


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
        await _answer(stream, http, request.method, HTTPStatus.OK, body, json_body)
    else:
        allow = [*json_body, ("allow", ", ".join(HEALTH_METHODS))]
        status = HTTPStatus.METHOD_NOT_ALLOWED
        await _answer(stream, http, request.method, status, _NOT_ALLOWED, allow)


async def _answer(
    stream: trio.abc.Stream,
    http: h11.Connection,
    method: bytes | None,
    status: HTTPStatus,
    body: bytes,
    headers: Sequence[tuple[str, str]] = _TEXT,
) -> None:
    """Send one answer to a request with `method` (None: one h11 could not read) with `headers`
    (its content-type among them); the connection is closed after it."""
    headers = [*headers, ("connection", "close"), ("content-length", str(len(body)))]
    answer: list[h11.Event] = [
        h11.Response(status_code=status, headers=headers, reason=status.phrase.encode())
    ]
    if method != b"HEAD":  # (h11 knows a HEAD answer has no body: it would refuse one)
        answer.append(h11.Data(data=body))
    answer.append(h11.EndOfMessage())
    await stream.send_all(b"".join(http.send(part) or b"" for part in answer))


def _asks_websocket(request: h11.Request) -> bool:
    """Whether `request` asks the WebSocket upgrade (the handshake checks the rest of it)."""
    asked = (value for name, value in request.headers if name == b"upgrade")
    return any(b"websocket" in map(bytes.strip, value.lower().split(b",")) for value in asked)
