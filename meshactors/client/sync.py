"""A small blocking client for the control socket, used by the CLI and simple scripts."""

from __future__ import annotations

import json
import socket
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from meshactors.wire.ipc import MAX_FRAME_BYTES

CONNECT_TIMEOUT = 5.0  # seconds to reach the socket
DEFAULT_CALL_TIMEOUT = 60.0  # seconds to wait for one answer


class ClientError(Exception):
    """The daemon answered with an error; `code` is its stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DaemonNotRunning(ClientError):
    """Nothing answers on the socket."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("not_running", f"no daemon answers on {path} ({reason})")
        self.path = path


@attrs.define
class SyncClient:
    """One connection; `call` waits for its answer, events that arrive meanwhile are kept."""

    sock: socket.socket
    timeout: float = DEFAULT_CALL_TIMEOUT
    _buffer: bytearray = attrs.field(factory=bytearray)
    _events: deque[dict[str, Any]] = attrs.field(factory=deque)
    _next_id: int = 1

    @classmethod
    def connect(cls, path: Path, timeout: float = DEFAULT_CALL_TIMEOUT) -> SyncClient:
        """Connect to the daemon's socket or raise DaemonNotRunning."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise DaemonNotRunning(path, exc.strerror or str(exc)) from None
        sock.settimeout(timeout)
        return cls(sock, timeout)

    def call(self, op: str, **params: Any) -> Any:
        """Run one op and return its `data`; raises ClientError on an error answer."""
        request_id = self._next_id
        self._next_id += 1
        self.sock.sendall(json.dumps({"id": request_id, "op": op, **params}).encode() + b"\n")
        while True:
            frame = self._read_frame()
            if "kind" in frame and "id" not in frame:
                self._events.append(frame)
            elif frame.get("id") == request_id:
                if frame.get("ok"):
                    return frame.get("data")
                error = frame.get("error") or {}
                raise ClientError(str(error.get("code")), str(error.get("message")))

    def events(self) -> Iterator[dict[str, Any]]:
        """Event frames, in order, forever (after `events_subscribe`)."""
        self.sock.settimeout(None)
        while True:
            while self._events:
                yield self._events.popleft()
            frame = self._read_frame()
            if "kind" in frame:
                yield frame

    def _read_frame(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_FRAME_BYTES * 64:
                raise ClientError("frame_too_large", "the daemon sent an oversized frame")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ClientError("closed", "the daemon closed the connection")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        frame: dict[str, Any] = json.loads(line)
        return frame

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
