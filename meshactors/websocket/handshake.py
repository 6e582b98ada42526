"""The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4), for either end.

Each side reads one bounded header block; bytes that arrive after it already belong to the
WebSocket and are handed on as `leftover`.
"""

from __future__ import annotations

import base64
import hashlib
import os

import attrs
import trio

MAX_HEAD_BYTES = 16 * 1024  # an upgrade request or response larger than this is refused
RECEIVE_CHUNK = 4096  # bytes read at a time while the header block is incomplete
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {404: "Not Found", 400: "Bad Request", 503: "Service Unavailable"}


class HandshakeFailed(Exception):
    """The other side did not complete a valid WebSocket upgrade."""


@attrs.frozen
class UpgradeRequest:
    """A client's upgrade request as the server sees it."""

    path: str
    headers: dict[str, str]  # lower-cased names
    key: str


def accept_token(key: str) -> str:
    """The Sec-WebSocket-Accept value that proves the server read `key`."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


async def _read_head(stream: trio.abc.ReceiveStream) -> tuple[list[str], bytes]:
    """The header block's lines (status or request line first) and the bytes after it."""
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0 and len(received) <= MAX_HEAD_BYTES:
        chunk = await stream.receive_some(RECEIVE_CHUNK)
        if not chunk:
            raise HandshakeFailed("connection closed during the upgrade")
        received += chunk
    if not 0 <= end <= MAX_HEAD_BYTES:  # the last chunk may have completed an oversized block
        raise HandshakeFailed(f"header block over {MAX_HEAD_BYTES} bytes")
    lines = received[:end].decode("latin-1").split("\r\n")  # every byte is a latin-1 character
    return lines, bytes(received[end + 4 :])


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HandshakeFailed(f"malformed header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _is_nonce(key: str) -> bool:
    """Whether `key` is the base64 of 16 bytes (RFC 6455 §4.1), so it can be answered."""
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error, or a key that is not ASCII
        return False


async def read_upgrade_request(stream: trio.abc.ReceiveStream) -> tuple[UpgradeRequest, bytes]:
    """Read and check a client's upgrade request; raises HandshakeFailed if it is not one."""
    lines, leftover = await _read_head(stream)
    method, _, rest = lines[0].partition(" ")
    path, _, version = rest.partition(" ")
    if method != "GET" or not version.startswith("HTTP/1.1"):
        raise HandshakeFailed(f"not a WebSocket upgrade: {lines[0][:60]!r}")
    headers = _headers(lines[1:])
    if (
        "websocket" not in _tokens(headers.get("upgrade", ""))
        or "upgrade" not in _tokens(headers.get("connection", ""))
        or headers.get("sec-websocket-version") != "13"
        or not headers.get("sec-websocket-key")
    ):
        raise HandshakeFailed("missing or wrong WebSocket upgrade headers")
    if not _is_nonce(headers["sec-websocket-key"]):
        raise HandshakeFailed("Sec-WebSocket-Key is not a base64 16-byte nonce")
    return UpgradeRequest(path, headers, headers["sec-websocket-key"]), leftover


def accept_response(request: UpgradeRequest) -> bytes:
    """The 101 answer that completes the server's side of the upgrade."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_token(request.key)}\r\n\r\n"
    ).encode("ascii")


def reject_response(status: int) -> bytes:
    """A plain HTTP refusal of an upgrade."""
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def upgrade_client(stream: trio.abc.Stream, host: str, path: str) -> bytes:
    """Send the upgrade request and check the server's 101; returns bytes read past it."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await stream.send_all(request.encode("ascii"))
    lines, leftover = await _read_head(stream)
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        raise HandshakeFailed(f"upgrade refused: {lines[0][:60]!r}")
    headers = _headers(lines[1:])
    if "websocket" not in _tokens(headers.get("upgrade", "")) or "upgrade" not in _tokens(
        headers.get("connection", "")
    ):
        raise HandshakeFailed("101 without Upgrade: websocket and Connection: upgrade")
    if headers.get("sec-websocket-accept") != accept_token(key):
        raise HandshakeFailed("wrong Sec-WebSocket-Accept")
    return leftover
