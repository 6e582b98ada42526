"""HTTP/1.1 on a control connection, on h11: telling it from JSON lines, and serving one
connection.

Requests on a connection are answered one after the other (keep-alive unless the client says
`Connection: close` or speaks HTTP/1.0); a request that cannot be read is answered once and
the connection closed. A connection waits IDLE_TIMEOUT for its next request only once it was
served one: its first must begin within REQUEST_TIMEOUT, so connections that never say
anything cannot hold the TCP listener's places for long. A client that hangs up while its
request runs is gone: the request is cancelled. Every byte goes out through `_send`,
in order, to the client actor's one writing path.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import socket
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from typing import Protocol, TypeVar

import attrs
import h11
import structlog
import trio

from meshactors.control.http_errors import HttpError, HttpErrorCode
from meshactors.control.http_parse import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    RECEIVE_CHUNK,
    REQUEST_TIMEOUT,
    RequestHead,
    bad_request,
    protocol_error,
    request_head,
)
from meshactors.control.http_response import (
    WRITE_TIMEOUT,
    Headers,
    HttpResponse,
    error_response,
    response_head,
)
from meshactors.control.http_routes import EventStreamAnswer, route
from meshactors.control.session import Session
from meshactors.control.sse import SSE_HEADERS, serve_events
from meshactors.control.tcp_auth import TcpGate
from meshactors.socket_io import wait_hung_up
from meshactors.wire.ipc import ErrorCode

T = TypeVar("T")

log = structlog.get_logger("meshactors.http")

CLOSE_LINGER = 1.0  # seconds a closing connection is drained, so unread input can't reset it
MAX_LINGER_BYTES = MAX_HEAD_BYTES + MAX_BODY_BYTES  # input drained at most while closing
MAX_READ_AHEAD = MAX_HEAD_BYTES + MAX_BODY_BYTES  # pipelined input kept while a request runs
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
HTTP_PREFIXES = tuple(f"{method} ".encode() for method in KNOWN_METHODS)
CONTINUE = HTTPStatus.CONTINUE  # the interim answer to `Expect: 100-continue`


def looks_like_http(prefix: bytes) -> bool | None:
    """Whether a connection starting with `prefix` speaks HTTP (a method token and a space);
    None while `prefix` is too short to tell. JSON lines start with `{`, so never match."""
    if prefix.startswith(HTTP_PREFIXES):
        return True
    if any(candidate.startswith(prefix) for candidate in HTTP_PREFIXES):
        return None
    return False


async def sniff(
    stream: trio.abc.ReceiveStream, prefix: bytes = b"", *, then: float = math.inf
) -> tuple[bool | None, bytes]:
    """Read a connection's first bytes (after `prefix`) until `looks_like_http` tells: its
    verdict and every byte read, for the protocol's reader to start with. False at the end of
    the stream (the JSON-lines reader sees the same end); None when, once bytes came, the rest
    needed to tell does not follow within `then` seconds. Before any byte it waits for good:
    a caller with an overall deadline sets its own."""
    deadline = math.inf  # until the first bytes
    while (verdict := looks_like_http(prefix)) is None:
        with trio.move_on_at(deadline):
            chunk = await stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                return False, prefix
            prefix += chunk
            deadline = min(deadline, trio.current_time() + then)
            continue
        return None, prefix
    return verdict, prefix


class Counters(Protocol):
    """Where a connection's request and error counts are kept (the client actor's figures)."""

    requests: int
    errors: int


@attrs.frozen
class Closed:
    """The client hung up, or idled out, before a request."""


@attrs.define(eq=False)
class HttpConnection:
    """Serves HTTP requests on one stream until the client closes or asks to."""

    stream: trio.abc.HalfCloseableStream
    session: Session
    counters: Counters
    write: Callable[[bytes], Awaitable[None]]  # the connection's one writing path
    auth: TcpGate | None = None  # set on the TCP listener: every request must pass it
    prefix: bytes = b""  # bytes already read while telling HTTP from JSON lines
    _h11: h11.Connection = attrs.field(
        factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES),
        init=False,
    )
    _sending: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _with_body: bool = attrs.field(default=True, init=False)  # False answering a HEAD

    async def serve(self) -> None:
        """Answer requests in order; returns when the connection is done."""
        if self.prefix:  # (empty data would tell h11 the client hung up)
            self._h11.receive_data(self.prefix)
        try:
            await self._serve()
        except* trio.TooSlowError:  # alone, or out of an event stream's tasks
            pass  # `_send` logged it; the connection ends

    async def _serve(self) -> None:
        for request_id in itertools.count(1):
            wait = REQUEST_TIMEOUT if request_id == 1 else IDLE_TIMEOUT
            try:
                request = await self._read_request(wait)
                if isinstance(request, Closed):
                    return
                head, body = request
            except HttpError as error:
                self.counters.errors += 1
                await self._finish(error_response(error))
                return
            answer = await self._unless_hung_up(route(head, body, self.session, request_id))
            if answer is None:
                log.info("http client hung up mid-request", client=self.session.client_id)
                return
            if isinstance(answer, EventStreamAnswer):
                if self._with_body:
                    await serve_events(self, self.session, answer.since)
                else:  # HEAD: the event stream's head alone
                    await self.start_events(SSE_HEADERS)
                    await self._send(h11.EndOfMessage())
                    await self._linger()
                return
            if answer.status >= 400:
                self.counters.errors += 1
            await self._send(*answer.events(close=False, with_body=self._with_body))
            if self._h11.our_state is h11.MUST_CLOSE:
                await self._linger()
                return
            self._h11.start_next_cycle()

    async def _read_request(self, wait: float) -> tuple[RequestHead, bytes] | Closed:
        """The next request's head and body, or Closed when its first byte does not come
        within `wait` seconds; its checks (and the TCP guard's) raise HttpError."""
        with trio.move_on_after(wait) as idle:
            while self._h11.trailing_data == (b"", False):
                await self._receive()
        if idle.cancelled_caught:
            return Closed()
        with self._in_time(trio.current_time() + REQUEST_TIMEOUT):
            event = await self._next_event()
            if isinstance(event, h11.ConnectionClosed):
                return Closed()
            assert isinstance(event, h11.Request)
            self.counters.requests += 1
            self._with_body = event.method != b"HEAD"
            head = request_head(event)
            if self.auth is not None:
                self.auth.check(head)  # before the body: strangers don't get to upload
            return head, await self._read_body(head)

    async def _read_body(self, head: RequestHead) -> bytes:
        """The body `head` announced, after a `100 Continue` if one was asked."""
        expect = head.headers.get("expect")
        if expect is not None and expect.lower() != "100-continue":
            raise HttpError(ErrorCode.BAD_REQUEST, f"cannot meet Expect: {expect}", status=417)
        body = bytearray()
        while True:
            if self._h11.they_are_waiting_for_100_continue and not self._h11.trailing_data[0]:
                reason = CONTINUE.phrase.encode()
                await self._send(
                    h11.InformationalResponse(status_code=CONTINUE, headers=[], reason=reason)
                )
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            if not isinstance(event, h11.Data):
                raise bad_request("connection closed inside the request body")
            body += event.data  # at most Content-Length bytes, which request_head capped

    async def _next_event(self) -> h11.Event:
        """h11's next event, reading as it needs; a request it refuses raises HttpError."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as error:
                raise protocol_error(error) from None
            if isinstance(event, h11.Event):
                return event
            assert event is h11.NEED_DATA  # never PAUSED: a cycle starts once answered
            pending = self._h11.trailing_data[0]
            if self._h11.their_state is h11.IDLE and looks_like_http(pending) is False:
                raise bad_request("not an HTTP request: expected `METHOD /path HTTP/1.1`")
            await self._receive()

    async def _receive(self) -> None:
        self._h11.receive_data(bytes(await self.stream.receive_some(RECEIVE_CHUNK)))

    @contextlib.contextmanager
    def _in_time(self, deadline: float) -> Iterator[None]:
        """Turns the request's deadline running out into a 408 answer."""
        try:
            with trio.fail_at(deadline):
                yield
        except trio.TooSlowError:
            raise HttpError(
                HttpErrorCode.REQUEST_TIMEOUT, f"request not received within {REQUEST_TIMEOUT} s"
            ) from None

    async def _send(self, *events: h11.Event, timeout: float | None = None) -> None:
        """Encode `events` and write them, in order, one sender at a time, within `timeout`
        seconds (WRITE_TIMEOUT unless given)."""
        async with self._sending:
            data = b"".join(self._h11.send(event) or b"" for event in events)
            with trio.fail_after(WRITE_TIMEOUT if timeout is None else timeout) as deadline:
                try:
                    await self.write(data)
                finally:  # logged here: as an event stream ends, its TooSlowError may not
                    if deadline.cancel_called:
                        log.info("http client stopped reading", client=self.session.client_id)

    async def start_events(self, headers: Headers) -> None:
        """Start an endless answer (server-sent events); the connection ends with it."""
        await self._send(response_head(200, headers, close=True))

    async def write_body(self, data: bytes) -> None:
        """Write part of an endless answer's body, waiting as long as the client reads
        nothing: what bounds an event stream is its lag (see sse.py), not time."""
        await self._send(h11.Data(data=data), timeout=math.inf)

    async def end_events(self) -> None:
        """End an endless answer with its last chunk, so the client sees it whole; nothing
        goes when the connection failed already (a write cut off, the client gone), nor
        before the answer's head went."""
        if self._h11.our_state is not h11.SEND_BODY:
            return
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError
        ):
            await self._send(h11.EndOfMessage())

    async def until_hangup(self) -> None:
        """Return once the client is gone: it closed its connection, or a write cut off (the
        client stopped reading) closed it. What it sends meanwhile is kept for the requests
        after this one (pipelined), up to MAX_READ_AHEAD bytes, past which nothing more is
        read. On the Unix socket an end of input may be a half-close, its answer still wanted:
        the client is gone once its socket polls hung up (checked every HANGUP_CHECK)."""
        # counted here: h11's trailing_data copies its whole buffer, O(n²) read by read
        read_ahead = len(self._h11.trailing_data[0])
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            while read_ahead < MAX_READ_AHEAD:
                if not (chunk := await self.stream.receive_some(RECEIVE_CHUNK)):
                    if not _may_half_close(self.stream):
                        return
                    break  # h11 is told of the end by the next request's read
                read_ahead += len(chunk)
                self._h11.receive_data(bytes(chunk))
            await wait_hung_up(self.stream)  # an end of input: only polling tells a hang-up

    async def _unless_hung_up(self, work: Awaitable[T]) -> T | None:
        """`work`'s result; None, `work` cancelled, once the client hangs up first: a caller
        that left is not waited for (its calls are cancelled on their serving side at once)."""
        done: list[T] = []
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                done.append(await work)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            await self.until_hangup()
            nursery.cancel_scope.cancel()
        return done[0] if done else None

    async def _finish(self, answer: HttpResponse) -> None:
        """Answer a request that cannot be served, then close."""
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(*answer.events(close=True, with_body=self._with_body))
        await self._linger()

    async def _linger(self) -> None:
        """Half-close, and drain briefly so a reset can't eat the answer."""
        await self.stream.send_eof()
        drained = 0
        with trio.move_on_after(CLOSE_LINGER):
            while drained < MAX_LINGER_BYTES:
                chunk = await self.stream.receive_some(RECEIVE_CHUNK)
                if not chunk:
                    break
                drained += len(chunk)


def _may_half_close(stream: trio.abc.Stream) -> bool:
    """Whether an end of input on `stream` may be a half-close the client still waits behind:
    a Unix socket tells one from a hang-up by polling; over TCP the two look the same, and
    the end counts as a hang-up."""
    return isinstance(stream, trio.SocketStream) and stream.socket.family == socket.AF_UNIX
