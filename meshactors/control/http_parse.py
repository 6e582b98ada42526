"""Request heads from h11's `Request` events, with the checks h11 leaves to us.

h11 parses and frames HTTP/1.1; this module adds the daemon's own refusals (origin-form
targets, HTTP/1.0 and 1.1 only, ASCII values, single-valued headers, header and body caps,
no chunked uploads). Every refusal is an `HttpError`. The query string is kept as it came:
routing splits it (`query_pairs`), so a bad one is an op's `invalid_params`, not an
unreadable request.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import attrs
import h11

from meshactors.control.http_errors import HttpError, HttpErrorCode
from meshactors.wire.ipc import ErrorCode, OpError

MAX_HEAD_BYTES = 16 * 1024  # request line and headers, blank line included
MAX_BODY_BYTES = 1024 * 1024  # one request body (the same cap as a JSON line)
MAX_HEADER_COUNT = 64  # header fields in one request
MAX_QUERY_FIELDS = 32  # name=value pairs in one query string
REQUEST_TIMEOUT = 30.0  # seconds from a request's first byte to its last; also the most an
# HTTP connection may wait before its first request begins (it is kept alive only once served)
IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may wait for its next request
RECEIVE_CHUNK = 64 * 1024  # bytes asked of the socket per read

VERSIONS = frozenset({b"1.0", b"1.1"})
# header fields that must appear at most once (a second one smells of request smuggling;
# h11 itself refuses a second Host and conflicting Content-Lengths)
SINGLE_HEADERS = frozenset({"authorization", "expect", "last-event-id", "idempotency-key"})
LINE_OVERHEAD = 4  # bytes around a field or the request line: `: ` (or spaces) and CRLF
# h11's hint for a Transfer-Encoding it cannot decode; we refuse every upload coding alike
H11_UNSUPPORTED_CODING = 501


def bad_request(message: str) -> HttpError:
    """A 400 for a request the daemon cannot make sense of."""
    return HttpError(ErrorCode.BAD_REQUEST, message)


@attrs.frozen
class RequestHead:
    """A request line and header block; header names are lower-case, repeats joined by `, `.

    `content_length` is None when the request has neither it nor a Transfer-Encoding: then it
    has no body (RFC 9112 6.3), as h11 reads it, and a POST means `{}`.
    """

    method: str
    path: str
    query: str  # as sent, after the `?` (see `query_pairs`)
    headers: dict[str, str]
    content_length: int | None


def request_head(request: h11.Request) -> RequestHead:
    """Our view of h11's `request`, or the HttpError to answer it with."""
    if request.http_version not in VERSIONS:
        raise HttpError(
            ErrorCode.BAD_REQUEST, "only HTTP/1.1 and HTTP/1.0 are spoken here", status=505
        )
    fields = request.headers.raw_items()
    if len(fields) > MAX_HEADER_COUNT:
        raise HttpError(
            ErrorCode.FRAME_TOO_LARGE, f"more than {MAX_HEADER_COUNT} headers", status=431
        )
    size = len(request.method) + len(request.target) + len(b"HTTP/1.1") + LINE_OVERHEAD
    if size + sum(len(n) + len(v) + LINE_OVERHEAD for n, v in fields) > MAX_HEAD_BYTES:
        raise head_too_large()
    if not request.target.startswith(b"/"):
        raise bad_request("the request target must be a path (`METHOD /path HTTP/1.1`)")
    headers = _headers(fields)
    content_length = _content_length(headers)
    method = request.method.decode("ascii")
    path, _, query = request.target.decode("ascii").partition("?")
    return RequestHead(method, path, query, headers, content_length)


def protocol_error(error: h11.RemoteProtocolError) -> HttpError:
    """The answer to a request h11 could not read."""
    if error.error_status_hint == 431:
        return head_too_large()
    if error.error_status_hint == H11_UNSUPPORTED_CODING:
        return _no_upload_coding()
    return bad_request(f"malformed request: {error}")


def head_too_large() -> HttpError:
    """A 431 for a request line and headers over MAX_HEAD_BYTES."""
    return HttpError(
        ErrorCode.FRAME_TOO_LARGE, f"request head exceeds {MAX_HEAD_BYTES} bytes", status=431
    )


def _headers(fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, value in fields:
        name = raw_name.decode("ascii").lower()  # h11 allows only token characters
        if not value.isascii():
            raise bad_request(f"header {name} holds non-ASCII bytes")
        text = value.decode("ascii")
        if name in headers:
            if name in SINGLE_HEADERS:
                raise bad_request(f"header {name} given twice")
            text = f"{headers[name]}, {text}"
        headers[name] = text
    return headers


def _content_length(headers: dict[str, str]) -> int | None:
    if "transfer-encoding" in headers:
        raise _no_upload_coding()
    value = headers.get("content-length")  # h11 checked it is digits, and only one value
    if value is None:
        return None
    length = int(value)
    if length > MAX_BODY_BYTES:
        raise HttpError(
            ErrorCode.FRAME_TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY_BYTES}"
        )
    return length


def _no_upload_coding() -> HttpError:
    return HttpError(
        HttpErrorCode.LENGTH_REQUIRED,
        "Transfer-Encoding (chunked uploads) is not supported: send Content-Length",
    )


def query_pairs(query: str) -> tuple[tuple[str, str], ...]:
    """The `name=value` pairs of a query string, percent- and `+`-decoded (a name without `=`
    has the value ""); `invalid_params` for more than MAX_QUERY_FIELDS, a field with no name
    (`?=x`: no params field could be named in the answer), or naming a field that is not
    UTF-8 once decoded."""
    fields = [field for field in query.split("&") if field]
    if len(fields) > MAX_QUERY_FIELDS:
        raise OpError(
            ErrorCode.INVALID_PARAMS, f"{len(fields)} query fields: at most {MAX_QUERY_FIELDS}"
        )
    pairs = []
    for field in fields:
        name, _, value = field.partition("=")
        try:
            pairs.append((_decoded(name), _decoded(value)))
        except UnicodeDecodeError:
            raise OpError(
                ErrorCode.INVALID_PARAMS, f"query field {name!r} is not UTF-8 once decoded"
            ) from None
        if not pairs[-1][0]:
            raise OpError(ErrorCode.INVALID_PARAMS, "a query field with no name")
    return tuple(pairs)


def _decoded(text: str) -> str:
    """A query name or value, percent- and `+`-decoded; UnicodeDecodeError when not UTF-8."""
    return unquote_plus(text, errors="strict")
