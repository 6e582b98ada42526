"""Client-side framing shared by the async and blocking clients: encode requests, split the
daemon's byte stream into frames (bounded), and tell answers from events."""

from __future__ import annotations

import json
from typing import Any

import attrs

from meshactors.client.errors import ClientError, ProtocolError
from meshactors.wire.ipc import MAX_FRAME_BYTES, RequestId, encode

MAX_INCOMING_FRAME = 64 * 1024 * 1024  # one frame from the daemon (inspect, inbox pages)


def encode_request(request_id: RequestId, op: str, params: dict[str, Any]) -> bytes:
    """One request line: `{"id": …, "op": …, …params}`; ClientError(`frame_too_large`) past
    the daemon's line cap, which it would answer without an id no caller could match."""
    if "id" in params or "op" in params:
        raise ValueError("params may not be named `id` or `op`")
    line = encode({"id": request_id, "op": op, **params})
    if len(line) > MAX_FRAME_BYTES:
        raise ClientError("frame_too_large", f"{op!r} request of {len(line)} bytes is over the cap")
    return line


def events_told(frame: dict[str, Any]) -> int:
    """How many events a frame counts as when a full buffer drops it: a `lagged` notice the
    events it tells were skipped (so the reader's own count keeps them), any other one."""
    skipped = frame.get("skipped")
    if frame.get("kind") == "lagged" and type(skipped) is int and skipped > 0:
        return skipped
    return 1


def lagged_channel(frame: dict[str, Any]) -> tuple[str, str] | None:
    """The network and channel a `lagged` notice names: a channel pump's, whose loss is that
    channel's alone; None for the connection's (naming none, or not as strings), whose
    skipped events may be of any kind."""
    network, channel = frame.get("network"), frame.get("channel")
    if isinstance(network, str) and isinstance(channel, str):
        return network, channel
    return None


@attrs.define
class FrameDecoder:
    """Turns received bytes into decoded JSON objects, one per line, with a size cap."""

    _buffer: bytearray = attrs.field(factory=bytearray)

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        """Add received bytes; return the complete frames they finish, in order."""
        self._buffer += data
        frames: list[dict[str, Any]] = []
        while (newline := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            if line.strip():
                frames.append(decode_frame(line))
        if len(self._buffer) > MAX_INCOMING_FRAME:
            raise ProtocolError(f"the daemon sent a frame over {MAX_INCOMING_FRAME} bytes")
        return frames


def decode_frame(line: bytes) -> dict[str, Any]:
    """One line as a JSON object, or ProtocolError."""
    try:
        frame = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"the daemon sent a line that is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ProtocolError("the daemon sent a line that is not a JSON object")
    return frame


def is_event(frame: dict[str, Any]) -> bool:
    """Events carry `kind` and no `ok`; answers always carry `ok` (an event may have an `id`
    field of its own, e.g. the outbox row id of `message_delivered`)."""
    return "kind" in frame and "ok" not in frame


def answer_data(frame: dict[str, Any]) -> Any:
    """The `data` of a success answer; raises ClientError with the daemon's code otherwise."""
    if frame.get("ok") is True:
        return frame.get("data")
    error = frame.get("error")
    if not isinstance(error, dict):
        raise ProtocolError(f"an error answer without an error object: {frame!r}")
    raise ClientError.from_wire(error)


def connection_refused(frame: dict[str, Any]) -> str | None:
    """Why the daemon refused a whole connection before handling any of it (an `unavailable`
    answer without an id: it serves as many clients as it can), or None for any other frame."""
    error = frame.get("error")
    if frame.get("id") is not None or frame.get("ok") is not False or not isinstance(error, dict):
        return None
    return str(error.get("message")) if error.get("code") == "unavailable" else None
