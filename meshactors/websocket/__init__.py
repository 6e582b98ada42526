"""A lean RFC 6455 WebSocket for the broker and the daemon's links (no extensions).

It reads in the caller's task and writes without an extra scheduler pass, which is what the
relay's latency budget needs; see docs/architecture.md for why it replaced trio-websocket.
"""

from meshactors.websocket.connection import ConnectionClosed, WebSocket, open_websocket
from meshactors.websocket.frames import CloseCode, ProtocolViolation
from meshactors.websocket.handshake import (
    HandshakeFailed,
    UpgradeRequest,
    accept_response,
    read_upgrade_request,
    reject_response,
)

__all__ = [
    "CloseCode",
    "ConnectionClosed",
    "HandshakeFailed",
    "ProtocolViolation",
    "UpgradeRequest",
    "WebSocket",
    "accept_response",
    "open_websocket",
    "read_upgrade_request",
    "reject_response",
]
