"""HTTP/1.1 on a control connection: telling it from JSON lines, and serving one connection.

Requests on a connection are answered one after the other (keep-alive unless the client says
`Connection: close`); a request that cannot be read is answered once and the connection closed.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import attrs
import structlog
import trio

from meshactors.daemon.http_errors import HttpError
from meshactors.daemon.http_parse import (
    KNOWN_METHODS,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    RECEIVE_CHUNK,
    RequestReader,
)
from meshactors.daemon.http_response import WRITE_TIMEOUT, HttpResponse, error_response
from meshactors.daemon.http_routes import EventStream, route
from meshactors.daemon.session import Session
from meshactors.daemon.sse import serve_events
from meshactors.daemon.tcp_auth import TcpAuth

log = structlog.get_logger("meshactors.http")

CLOSE_LINGER = 1.0  # seconds a closing connection is drained, so unread input can't reset it
MAX_LINGER_BYTES = MAX_HEAD_BYTES + MAX_BODY_BYTES  # input drained at most while closing
HTTP_PREFIXES = tuple(f"{method} ".encode() for method in KNOWN_METHODS)


def looks_like_http(prefix: bytes) -> bool | None:
    """Whether a connection starting with `prefix` speaks HTTP (a method token and a space);
    None while `prefix` is too short to tell. JSON lines start with `{`, so never match."""
    if prefix.startswith(HTTP_PREFIXES):
        return True
    if any(candidate.startswith(prefix) for candidate in HTTP_PREFIXES):
        return None
    return False


class Counters(Protocol):
    """Where a connection's request and error counts are kept (the client actor's figures)."""

    requests: int
    errors: int


@attrs.define(eq=False)
class HttpConnection:
    """Serves HTTP requests on one stream until the client closes or asks to."""

    stream: trio.abc.HalfCloseableStream
    session: Session
    counters: Counters
    auth: TcpAuth | None = None  # set on the TCP listener: every request must pass it
    prefix: bytes = b""  # bytes already read while telling HTTP from JSON lines

    async def serve(self) -> None:
        """Answer requests in order; returns when the connection is done."""
        try:
            await self._serve()
        except trio.TooSlowError:
            log.info("http client stopped reading", client=self.session.client_id)

    async def _serve(self) -> None:
        reader = RequestReader(self.stream, bytearray(self.prefix))
        for request_id in itertools.count(1):
            try:
                head = await reader.read_head()
                if head is None:
                    return
                self.counters.requests += 1
                if self.auth is not None:
                    self.auth.check(head)  # before the body: strangers don't get to upload
                body = await reader.read_body(head)
            except HttpError as error:
                self.counters.errors += 1
                await self._finish(error_response(error))
                return
            answer = await route(head, body, self.session, request_id)
            if isinstance(answer, EventStream):
                await serve_events(self.stream, self.session.services.events, answer.since)
                return
            if answer.status >= 400:
                self.counters.errors += 1
            if not head.keep_alive:
                await self._finish(answer)
                return
            await self._write(answer.encode(close=False))

    async def _write(self, data: bytes) -> None:
        with trio.fail_after(WRITE_TIMEOUT):
            await self.stream.send_all(data)

    async def _finish(self, answer: HttpResponse) -> None:
        """Send the last answer, half-close, and drain briefly so a reset can't eat the answer."""
        await self._write(answer.encode(close=True))
        await self.stream.send_eof()
        drained = 0
        with trio.move_on_after(CLOSE_LINGER):
            while drained < MAX_LINGER_BYTES:
                chunk = await self.stream.receive_some(RECEIVE_CHUNK)
                if not chunk:
                    break
                drained += len(chunk)
