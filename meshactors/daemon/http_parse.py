"""A small strict HTTP/1.1 request reader: bounded head and body, no chunked uploads.

Anything it cannot read with certainty raises `HttpError` with the status to answer; such
errors leave the stream out of sync, so the connection answers once and closes.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from urllib.parse import parse_qsl

import attrs
import trio

from meshactors.daemon.http_errors import HttpError, HttpErrorCode
from meshactors.wire.ipc import ErrorCode

MAX_HEAD_BYTES = 16 * 1024  # request line and headers, blank line included
MAX_BODY_BYTES = 1024 * 1024  # one request body (the same cap as a JSON line)
MAX_HEADER_COUNT = 64  # header fields in one request
MAX_QUERY_FIELDS = 32  # name=value pairs in one query string
MAX_CONTENT_LENGTH_DIGITS = 12  # longer Content-Length values are refused before int()
REQUEST_TIMEOUT = 30.0  # seconds from a request's first byte to its last
IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may wait for its next request
RECEIVE_CHUNK = 64 * 1024  # bytes asked of the socket per read

KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # these must say how long their body is
# header fields that must appear at most once (a second one smells of request smuggling)
SINGLE_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "authorization",
        "expect",
        "last-event-id",
        "idempotency-key",
    }
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")  # origin-form: printable ASCII, no spaces
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e]*")  # visible ASCII, spaces and tabs
_VERSION = re.compile(rb"HTTP/1\.[01]")


def bad_request(message: str) -> HttpError:
    """A 400 for a request this reader cannot make sense of."""
    return HttpError(ErrorCode.BAD_REQUEST, message)


@attrs.frozen
class RequestHead:
    """A parsed request line and header block; header names are lower-case."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    version: str
    headers: dict[str, str]
    content_length: int | None

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after the answer (HTTP/1.1 unless told to close)."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_head(head: bytes) -> RequestHead:
    """Parse a request line and headers (CRLF-separated, blank line excluded) strictly."""
    request_line, *field_lines = head.split(b"\r\n")
    method, target, version = parse_request_line(request_line)
    if len(field_lines) > MAX_HEADER_COUNT:
        raise HttpError(
            ErrorCode.FRAME_TOO_LARGE, f"more than {MAX_HEADER_COUNT} headers", status=431
        )
    headers = _parse_fields(field_lines)
    if version == "HTTP/1.1" and "host" not in headers:
        raise bad_request("HTTP/1.1 requests need a Host header")
    content_length = _content_length(headers)
    if content_length is None and method in BODY_METHODS:
        raise HttpError(HttpErrorCode.LENGTH_REQUIRED, f"{method} needs a Content-Length")
    path, _, query = target.partition("?")
    return RequestHead(
        method=method,
        path=path,
        query=_parse_query(query),
        version=version,
        headers=headers,
        content_length=content_length,
    )


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """Method, target and version of a request line (without its CRLF)."""
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise bad_request("malformed request line: expected `METHOD /path HTTP/1.1` and CRLF")
    if not _VERSION.fullmatch(parts[2]):
        raise HttpError(
            ErrorCode.BAD_REQUEST, "only HTTP/1.1 and HTTP/1.0 are spoken here", status=505
        )
    method, target, version = (part.decode("ascii") for part in parts)
    return method, target, version


def _parse_fields(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise bad_request(f"malformed header line {line[:64]!r}")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise bad_request(f"header {name.decode()} holds control or non-ASCII bytes")
        key, text = name.decode("ascii").lower(), value.decode("ascii")
        if key in headers:
            if key in SINGLE_HEADERS:
                raise bad_request(f"header {key} given twice")
            text = f"{headers[key]}, {text}"
        headers[key] = text
    return headers


def _parse_query(query: str) -> tuple[tuple[str, str], ...]:
    if not query:
        return ()
    try:
        pairs = parse_qsl(
            query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS, errors="strict"
        )
    except ValueError as exc:
        raise bad_request(f"bad query string: {exc}") from None
    return tuple(pairs)


def _content_length(headers: dict[str, str]) -> int | None:
    if "transfer-encoding" in headers:
        raise HttpError(
            HttpErrorCode.LENGTH_REQUIRED,
            "Transfer-Encoding (chunked uploads) is not supported: send Content-Length",
        )
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise bad_request(f"bad Content-Length {value[:32]!r}")
    length = int(value)
    if length > MAX_BODY_BYTES:
        raise HttpError(
            ErrorCode.FRAME_TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY_BYTES}"
        )
    return length


@attrs.define
class RequestReader:
    """Reads requests off one connection, keeping bytes that belong to the next one."""

    stream: trio.abc.Stream
    buffer: bytearray = attrs.field(factory=bytearray)
    _deadline: float = attrs.field(default=math.inf, init=False)

    async def read_head(self) -> RequestHead | None:
        """The next request's head; None when the client hung up or idled out between requests."""
        with trio.move_on_after(IDLE_TIMEOUT):
            while not self.buffer.lstrip(b"\r\n"):  # RFC 9112: skip stray blank lines
                self.buffer.clear()
                if not await self._receive():
                    return None
        if not self.buffer:
            return None
        del self.buffer[: len(self.buffer) - len(self.buffer.lstrip(b"\r\n"))]
        self._deadline = trio.current_time() + REQUEST_TIMEOUT
        with self._in_time():
            while (end := self.buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)) < 0:
                self._check_first_line()  # fail fast on what is not HTTP at all
                if len(self.buffer) >= MAX_HEAD_BYTES:
                    raise _head_too_large()
                if not await self._receive():
                    raise bad_request("connection closed inside the request head")
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return parse_head(head)

    def _check_first_line(self) -> None:
        line_end = self.buffer.find(b"\n")
        if line_end >= 0:
            if self.buffer[line_end - 1 : line_end] != b"\r":
                raise bad_request("request lines must end in CRLF")
            parse_request_line(bytes(self.buffer[: line_end - 1]))

    async def read_body(self, head: RequestHead) -> bytes:
        """The body `head` announced (b"" when none), after a `100 Continue` if one was asked."""
        length = head.content_length or 0
        expect = head.headers.get("expect")
        with self._in_time():
            if expect is not None:
                if expect.lower() != "100-continue":
                    raise HttpError(
                        ErrorCode.BAD_REQUEST, f"cannot meet Expect: {expect}", status=417
                    )
                if length > len(self.buffer):
                    await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(self.buffer) < length:
                if not await self._receive():
                    raise bad_request("connection closed inside the request body")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body

    async def _receive(self) -> bool:
        chunk = await self.stream.receive_some(RECEIVE_CHUNK)
        self.buffer += chunk
        return bool(chunk)

    @contextlib.contextmanager
    def _in_time(self) -> Iterator[None]:
        """Turns the request's deadline running out into a 408 answer."""
        try:
            with trio.fail_at(self._deadline):
                yield
        except trio.TooSlowError:
            raise HttpError(
                HttpErrorCode.REQUEST_TIMEOUT, f"request not received within {REQUEST_TIMEOUT} s"
            ) from None


def _head_too_large() -> HttpError:
    return HttpError(
        ErrorCode.FRAME_TOO_LARGE, f"request head exceeds {MAX_HEAD_BYTES} bytes", status=431
    )
