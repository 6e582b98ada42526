"""Errors the client library raises; each has a stable `code` a program may branch on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshactors.paths import SOCKET_PATH_FIX, socket_path_too_long

START_COMMAND = "meshactors daemon up"  # what DaemonNotRunning tells the user to run


class ClientError(Exception):
    """The daemon answered with an error, or the client could not get an answer.

    `code` is the daemon's stable error code (`no_such_peer`, `timeout`, …) or one of the
    client's own (`not_running`, `connection_lost`, `deadline`, `protocol`, `closed`).
    """

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}

    @classmethod
    def from_wire(cls, error: Mapping[str, Any]) -> ClientError:
        """The error object of an answer or event: its code, message and the rest as details."""
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return cls(str(error.get("code")), str(error.get("message")), details)


class DaemonNotRunning(ClientError):
    """Nothing answers on the socket (after retrying for the connect timeout, if any)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("not_running", f"no daemon answers on {path} ({reason})")
        self.path = path
        self.hint = f"start one with `{START_COMMAND}`"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}; {self.hint}"


class SocketPathTooLong(DaemonNotRunning):
    """The socket's path does not fit a Unix socket address: no daemon can answer there, and
    starting one would not help (connecting says only "AF_UNIX path too long")."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
        self.hint = SOCKET_PATH_FIX

    @classmethod
    def check(cls, path: Path) -> None:
        """Raise one when `path` is too long to connect to."""
        reason = socket_path_too_long(path)
        if reason is not None:
            raise cls(path, reason)


class DaemonBusy(ClientError):
    """The daemon took none of a new connection, too busy for one more (its listen queue is
    full, or it serves as many clients as it can): `unavailable`, safe to retry, as nothing
    sent on the connection was handled (after retrying for the connect timeout)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("unavailable", f"the daemon on {path} takes no connection now ({reason})")
        self.path = path
        self.reason = reason


class ConnectFailed(ClientError):
    """Something is at the socket's path but it cannot be connected to (permission denied, not
    a directory on the way, ...): not retried, and starting a daemon would not help."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("connect_failed", f"cannot connect to {path}: {reason}")
        self.path = path
        self.reason = reason


class ConnectionLost(ClientError):
    """The connection closed before the answer came; the op may or may not have run."""

    def __init__(self, message: str = "the daemon closed the connection") -> None:
        super().__init__("connection_lost", message)


class DeadlineExceeded(ClientError):
    """No answer within the call's deadline (the client's own timer, not the daemon's)."""

    def __init__(self, op: str, seconds: float) -> None:
        super().__init__("deadline", f"no answer to {op!r} within {seconds:g} s")
        self.op = op


class ProtocolError(ClientError):
    """The daemon sent something that is not a valid frame; the connection is dropped."""

    def __init__(self, message: str) -> None:
        super().__init__("protocol", message)


class ClientClosed(ClientError):
    """The client was closed; no more calls can be made on it."""

    def __init__(self) -> None:
        super().__init__("closed", "the client is closed")
