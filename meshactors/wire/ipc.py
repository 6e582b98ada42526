"""Local IPC framing: newline-delimited JSON requests, answers, errors and events.

A request is `{"id": …, "op": "…", …params}` (without `id`: a notification, answered only
if it fails); the answer is `{"id": …, "ok": true,
"data": {…}}` or `{"id": …, "ok": false, "error": {"code": "…", "message": "…"}}`; an event
is `{"kind": "…", …}`. Ids are strings or integers chosen by the client and echoed back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, get_args

import attrs

from meshactors.wire.compact import dumps_ascii, dumps_utf8, loads
from meshactors.wire.jsonlimits import too_deep

IPC_API_VERSION = 1
MAX_FRAME_BYTES = 1024 * 1024  # one request line, newline included
MAX_REQUEST_ID_CHARS = 128  # a string request id
# requests one connection may have in flight (each line ≤ 1 MiB): the daemon answers more with
# too_many_requests, the client library holds more back until an answer comes
MAX_CONCURRENT_REQUESTS = 128
# ...and besides them, requests of ops that settle a call already in flight (answer one served
# here, or cancel one made here): counted apart, with a cap of their own in both, so a
# connection's own calls, however many, can never keep it from answering the calls it serves
MAX_CONCURRENT_SETTLING = 128
SETTLING_OPS = frozenset({"rpc_respond", "rpc_stream_chunk", "rpc_stream_end", "rpc_cancel"})
MAX_OP_CHARS = 64
DEFAULT_PAGE = 100  # `inbox`, `outbox_list`, `state_list` rows when no limit is given (all clients)
MAX_PAGE = 500  # ...and the most one page of them returns, bounding one answer on the socket
# ...and past a page's first row, at most this many bytes of its rows' stored text (inbox and
# outbox messages with their meta, outbox deliveries, state keys and values): a page of large
# rows is cut short (its `next_cursor` set, the inbox's `more` true), so an answer being built
# stays bounded
MAX_PAGE_DATA_BYTES = 1024 * 1024
# a durable send's queue order: every due 'now' goes before any 'next', 'next' before 'low';
# the client library's type and the daemon's check (PRIORITIES, in draining order) are one
Priority = Literal["now", "next", "low"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

T = TypeVar("T")


def within_page_bytes(sized: Iterable[tuple[T, int]], max_bytes: int) -> tuple[list[T], bool]:
    """The items of (item, size) pairs, in order, until their sizes add up past `max_bytes`
    (the first is always taken, so paging goes on); and whether that cut them short. Pairs
    past the cut are never drawn: a lazy `sized` reads no further."""
    taken: list[T] = []
    total = 0
    for item, size in sized:
        total += size
        if taken and total > max_bytes:
            return taken, True
        taken.append(item)
    return taken, False


class ErrorCode(enum.StrEnum):
    """Stable error codes on the control socket; clients may branch on them."""

    BAD_JSON = "bad_json"  # the line is not a JSON object
    FRAME_TOO_LARGE = "frame_too_large"  # the line exceeds MAX_FRAME_BYTES
    BAD_REQUEST = "bad_request"  # `op` missing, or `id` or `op` of the wrong type
    UNKNOWN_OP = "unknown_op"
    INVALID_PARAMS = "invalid_params"  # params failed strict validation
    TOO_MANY_REQUESTS = "too_many_requests"  # the connection's concurrent request cap
    INTERNAL = "internal"  # a bug: the daemon logged it
    UNAVAILABLE = "unavailable"  # the daemon is starting or stopping that part
    STORAGE = "storage"  # the state database cannot be written (full, read-only, I/O, locked)
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TIMEOUT = "timeout"
    # the mesh
    NO_SUCH_NETWORK = "no_such_network"
    NO_SUCH_PEER = "no_such_peer"
    PEER_NOT_ACTIVE = "peer_not_active"
    LINK_DOWN = "link_down"
    # RPC and channels
    NO_HANDLER = "no_handler"
    HANDLER_GONE = "handler_gone"
    REMOTE_ERROR = "remote_error"
    CANCELLED = "cancelled"
    UNKNOWN_REQUEST = "unknown_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    LAGGED = "lagged"  # the connection fell behind a stream it was receiving
    # durable messages
    NO_RECIPIENTS = "no_recipients"
    NOT_REQUEUEABLE = "not_requeueable"  # only a dead outbox row can be requeued
    # replicated state and closed networks
    STATE_FULL = "state_full"  # the network's state map is at its key or byte limit
    FORBIDDEN = "forbidden"  # our role (or, in an open network, status) does not allow it
    INVITE_REFUSED = "invite_refused"  # an invite token past its time, or not valid


class OpError(Exception):
    """An error answer: raised by op handlers, written as `{"ok": false, "error": …}`."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        """The `error` object of an answer."""
        return {"code": self.code.value, "message": self.message, **self.details}


RequestId = str | int


@attrs.frozen
class Request:
    """A parsed request line: its id (None: a notification), op name and still-unvalidated
    params."""

    id: RequestId | None
    op: str
    params: dict[str, Any]


class BadFrame(OpError):
    """A line that could not be read as a request; `request_id` is echoed when it was found."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId | None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def read_json_object(data: bytes, what: str) -> dict[str, Any]:
    """`data` (a request line, an HTTP body: `what`) as a JSON object, or BadFrame `bad_json`
    with no request id (none was read). Strictly UTF-8, as JSON between programs must be (RFC
    8259): a BOM, or UTF-16 or UTF-32 that `json.loads` would guess from bytes, is refused."""
    try:
        value = loads(data.decode("utf-8"))  # str parses faster than bytes
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadFrame(ErrorCode.BAD_JSON, f"{what} is not valid JSON: {exc}", None) from None
    except RecursionError:  # past the parser's stack: far deeper than any request may be
        raise BadFrame(ErrorCode.BAD_JSON, too_deep().detail, None) from None
    if not isinstance(value, dict):
        raise BadFrame(ErrorCode.BAD_JSON, f"{what} must be a JSON object", None)
    return value


def parse_request(line: bytes) -> Request:
    """Decode one request line; raises BadFrame with the error to answer."""
    frame = read_json_object(line, "a request")
    notification = "id" not in frame
    request_id = frame.pop("id", None)
    if not notification and not _valid_id(request_id):
        raise BadFrame(
            ErrorCode.BAD_REQUEST,
            f"`id` must be a string of 1 to {MAX_REQUEST_ID_CHARS} characters or an integer "
            "(or be left out: a notification)",
            None,
        )
    op = frame.pop("op", None)
    if not isinstance(op, str) or not op or len(op) > MAX_OP_CHARS:
        raise BadFrame(ErrorCode.BAD_REQUEST, "`op` must be a non-empty string", request_id)
    return Request(request_id, op, frame)


def _valid_id(value: object) -> bool:
    if isinstance(value, str):
        return 0 < len(value) <= MAX_REQUEST_ID_CHARS
    return isinstance(value, int) and not isinstance(value, bool)


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as a compact JSON line (escaped to ASCII when it holds a lone surrogate, which
    JSON may carry as `\\udXXX` but UTF-8 cannot)."""
    try:
        return dumps_utf8(frame).encode() + b"\n"
    except UnicodeEncodeError:
        return dumps_ascii(frame).encode() + b"\n"


def encoded_size_floor(frame: dict[str, Any]) -> int:
    """A lower bound of `len(encode(frame))`, found without encoding it: the characters of
    its top-level strings (each at least one byte of the line), where a payload's bulk is."""
    return sum(len(value) for value in frame.values() if isinstance(value, str))


def ok_frame(request_id: RequestId | None, data: Any) -> bytes:
    """A success answer."""
    return encode({"id": request_id, "ok": True, "data": data})


def error_frame(request_id: RequestId | None, error: OpError) -> bytes:
    """An error answer."""
    return encode({"id": request_id, "ok": False, "error": error.to_wire()})


def event_frame(kind: str, data: dict[str, Any]) -> bytes:
    """An event pushed to a subscribed connection."""
    return encode({"kind": kind, **data})
