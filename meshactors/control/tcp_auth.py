"""The loopback TCP listener's guard: a bearer token kept in a 0600 file, checked per request.

Only programs that can read the token file get in; browsers are kept out by refusing any
`Origin` and any `Host` but our own loopback address (DNS rebinding), and a token is never
taken from the query string, where it would end up in logs and shell history. A connection
whose request passed tells the listener so (`TcpGate`): until then it may be evicted to make
room for a newcomer.
"""

from __future__ import annotations

import hmac
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qsl

import attrs
import trio

from meshactors.control.http_errors import HttpError, HttpErrorCode
from meshactors.control.http_parse import RequestHead
from meshactors.paths import read_private_bytes, write_private_file
from meshactors.wire.ipc import ErrorCode

TCP_HOST = "127.0.0.1"  # the TCP listener binds loopback only
TOKEN_BYTES = 32  # random bytes in a new token (43 urlsafe-base64 characters)
MAX_TOKEN_FILE_BYTES = 1024  # a larger token file is refused unread
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_\-]{32,512}")  # what a usable token looks like
QUERY_TOKEN_KEYS = frozenset({"token", "access_token"})  # refused: tokens go in a header
AUTH_CHALLENGE = 'Bearer realm="meshactors"'


class TokenFileError(ValueError):
    """The token file exists but does not hold a usable token; it is left for the owner."""


def load_or_create_token(path: Path) -> str:
    """The bearer token in `path`, created (0600) on first use; a wider mode is tightened."""
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        write_private_file(path, f"{token}\n".encode(), replace=False)
    except FileExistsError:  # another process made one first: use theirs
        return _read_token(path)
    return token


def _read_token(path: Path) -> str:
    raw = read_private_bytes(path, MAX_TOKEN_FILE_BYTES + 1)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(raw) > MAX_TOKEN_FILE_BYTES or not TOKEN_SHAPE.fullmatch(token):
        raise TokenFileError(
            f"{path} does not hold a bearer token (32-512 urlsafe-base64 characters); "
            "remove it to have a new one made"
        )
    return token


@attrs.frozen
class TcpAuth:
    """Checks one TCP request's head: no query token, no Origin, our Host, the right bearer."""

    token: str = attrs.field(repr=False)
    port: int

    @property
    def hosts(self) -> frozenset[str]:
        """The Host values this listener answers to."""
        return frozenset({f"{TCP_HOST}:{self.port}", f"localhost:{self.port}"})

    def check(self, head: RequestHead) -> None:
        """Raise the HttpError to answer, or return when the request may proceed."""
        sent = parse_qsl(head.query, keep_blank_values=True, errors="replace")  # even a bad one
        if any(key in QUERY_TOKEN_KEYS for key, _ in sent):
            raise HttpError(
                ErrorCode.BAD_REQUEST,
                "a token in the query string is refused; send Authorization: Bearer",
            )
        if "origin" in head.headers:
            raise HttpError(HttpErrorCode.FORBIDDEN, "requests with an Origin header are refused")
        if head.headers.get("host", "").lower() not in self.hosts:
            raise HttpError(
                HttpErrorCode.FORBIDDEN,
                f"Host must be {TCP_HOST}:{self.port} or localhost:{self.port}",
                status=421,
            )
        scheme, _, presented = head.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        ):
            raise HttpError(
                HttpErrorCode.UNAUTHORIZED,
                "send Authorization: Bearer <the token in the daemon's token file>",
                headers=(("WWW-Authenticate", AUTH_CHALLENGE),),
            )


@attrs.define(eq=False)
class TcpGate:
    """One TCP connection's guard: checks each request with `auth`, and the first time one
    passes sends the connection's `name` on `passed`, to the listener, which from then on
    never evicts it to make room (strangers are evicted, the owner's clients never)."""

    auth: TcpAuth
    name: str  # the client's node name under `control`
    passed: trio.MemorySendChannel[str]
    _told: bool = attrs.field(default=False, init=False)

    def check(self, head: RequestHead) -> None:
        """Raise the HttpError to answer, or return when the request may proceed."""
        self.auth.check(head)
        if not self._told:
            self._told = True
            self.passed.send_nowait(self.name)  # room for one per connection: see Admissions
