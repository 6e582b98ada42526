"""HTTP answers as h11 events, with JSON bodies in the socket's `{"ok": …}` shape."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import attrs
import h11

from meshactors.control.http_errors import HttpError, status_for
from meshactors.wire.ipc import OpError

SERVER_NAME = "meshactors"  # the Server header
WRITE_TIMEOUT = 30.0  # seconds one write to a client may take before it is dropped
Headers = tuple[tuple[str, str], ...]


@attrs.frozen
class HttpResponse:
    """A complete answer: status, extra headers and a body."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Headers = ()

    def events(self, *, close: bool, with_body: bool = True) -> list[h11.Event]:
        """The h11 events of this answer (no body bytes for a HEAD request)."""
        framing = (("Content-Type", self.content_type), ("Content-Length", str(len(self.body))))
        head = response_head(self.status, (*framing, *self.headers), close=close)
        body = [h11.Data(data=self.body)] if with_body and self.body else []
        return [head, *body, h11.EndOfMessage()]


def response_head(status: int, headers: Headers, *, close: bool) -> h11.Response:
    """A response head with the Server header (and `Connection: close` when `close`)."""
    extra = (("Connection", "close"),) if close else ()
    return h11.Response(
        status_code=status,
        headers=[("Server", SERVER_NAME), *headers, *extra],
        reason=_reason(status).encode("ascii"),
    )


def encode_alone(response: HttpResponse) -> bytes:
    """`response` as bytes for a connection no request was read from (the daemon is full)."""
    connection = h11.Connection(h11.SERVER)
    return b"".join(connection.send(event) or b"" for event in response.events(close=True))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def json_response(status: int, payload: dict[str, Any]) -> HttpResponse:
    """A JSON body (compact, UTF-8) with `status`."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return HttpResponse(status, body + b"\n")


def ok_response(data: Any, status: int = 200) -> HttpResponse:
    """`{"ok": true, "data": …}`, as the socket answers."""
    return json_response(status, {"ok": True, "data": data})


def error_response(error: OpError | HttpError) -> HttpResponse:
    """`{"ok": false, "error": {"code", "message", …}}` with the code's status."""
    if isinstance(error, HttpError):
        wire: dict[str, Any] = {"code": str(error.code), "message": error.message}
        status, headers = error.status, error.headers
    else:
        wire, status, headers = error.to_wire(), status_for(error.code), ()
    response = json_response(status, {"ok": False, "error": wire})
    return attrs.evolve(response, headers=headers)
