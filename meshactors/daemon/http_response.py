"""HTTP answers: status line, headers, and JSON bodies in the socket's `{"ok": …}` shape."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import attrs

from meshactors.daemon.http_errors import HttpError, status_for
from meshactors.wire.ipc import OpError

SERVER_NAME = "meshactors"  # the Server header
WRITE_TIMEOUT = 30.0  # seconds one write to a client may take before it is dropped


@attrs.frozen
class HttpResponse:
    """A complete answer: status, extra headers and a body."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, close: bool) -> bytes:
        """Status line, headers and body, ready for the socket."""
        return encode_head(
            self.status,
            (
                ("Content-Type", self.content_type),
                ("Content-Length", str(len(self.body))),
                *self.headers,
            ),
            close=close,
        ) + (self.body)


def encode_head(status: int, headers: tuple[tuple[str, str], ...], *, close: bool) -> bytes:
    """A response's status line and header block, ending in the blank line."""
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Server: {SERVER_NAME}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


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
