"""The framing of a binary stream on the control socket, both ways, sans-IO.

After `stream_open` or `stream_accept` is answered, each frame is a u32 big-endian length word,
then that many bytes: 1..MAX_STREAM_FRAME_BYTES data, 0 the end of data in that direction, the
top bit set an error (`{"code","message"}` as UTF-8 JSON, its length in the low bits). See
docs/protocol.md, "Binary streams". The daemon and the client library both use this module.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import attrs

MAX_STREAM_FRAME_BYTES = 1024 * 1024  # one data frame a program may write
MAX_ERROR_FRAME_BYTES = 4096  # one error frame's JSON
ERROR_BIT = 0x8000_0000
_LENGTH = struct.Struct(">I")
END_FRAME = _LENGTH.pack(0)


@attrs.frozen
class End:
    """End of data in one direction."""


@attrs.frozen
class Reset:
    """The stream is over both ways, for `code` and `message`."""

    code: str
    message: str


END = End()
Item = bytes | End | Reset  # what the channels between the socket and core carry


def encode(item: Item) -> list[bytes]:
    """The socket bytes of one item: a length word, then its bytes (none for the end)."""
    if isinstance(item, End):
        return [END_FRAME]
    if isinstance(item, Reset):
        body = _error_body(item.code, item.message)
        return [_LENGTH.pack(ERROR_BIT | len(body)), body]
    return [_LENGTH.pack(len(item)), item]


def _error_body(code: str, message: str) -> bytes:
    """An error frame's JSON; a message it cannot hold within MAX_ERROR_FRAME_BYTES loses its
    middle, so its start (`CMD exited STATUS: `) and its end (the last of a stderr) arrive.
    Cutting the JSON instead would break it: an escaped character takes up to 12 bytes."""
    body = _json_error(code, message)
    if len(body) <= MAX_ERROR_FRAME_BYTES:
        return body
    fits, too_many = 0, min(len(message), MAX_ERROR_FRAME_BYTES)  # characters kept
    while too_many - fits > 1:
        kept = (fits + too_many) // 2
        if len(_json_error(code, _middle_cut(message, kept))) <= MAX_ERROR_FRAME_BYTES:
            fits = kept
        else:
            too_many = kept
    return _json_error(code, _middle_cut(message, fits))


def _json_error(code: str, message: str) -> bytes:
    """The JSON of an error frame's fields."""
    return json.dumps({"code": code, "message": message}).encode()


def _middle_cut(message: str, kept: int) -> str:
    """`message`'s first and last characters, `kept` of them in all, joined by an ellipsis."""
    head = (kept + 1) // 2
    return f"{message[:head]}…{message[len(message) - (kept - head) :]}"


@attrs.define(eq=False)
class FrameParser:
    """Cuts bytes read from a stream's socket into items; a bad length word becomes a Reset
    (`frame_too_large`) after which nothing more is parsed. With `piece`, a data frame's bytes
    are yielded as they come, cut into pieces of at most `piece` bytes (frame boundaries are not
    kept end to end), so the parser holds no data frame whole: at most a length word or an
    error frame; without it, each data frame whole."""

    piece: int | None = None
    _buffer: bytearray = attrs.field(factory=bytearray)
    _data_left: int = 0  # with `piece`: bytes of the data frame begun that are still to come
    broken: bool = False

    def feed(self, data: bytes) -> Iterator[Item]:
        """Take `data`; yield each item it completes (or, with `piece`, each piece), in order."""
        self._buffer += data
        while not self.broken and self._buffer:
            if self._data_left:
                assert self.piece is not None  # only a parser with pieces begins a frame so
                size = min(len(self._buffer), self._data_left, self.piece)
                body = bytes(self._buffer[:size])
                del self._buffer[:size]
                self._data_left -= size
                yield body
                continue
            if len(self._buffer) < _LENGTH.size:
                return
            (word,) = _LENGTH.unpack_from(self._buffer)
            size = word & ~ERROR_BIT
            limit = MAX_ERROR_FRAME_BYTES if word & ERROR_BIT else MAX_STREAM_FRAME_BYTES
            if size > limit:
                self.broken = True
                yield Reset("frame_too_large", f"a frame of {size} bytes; the limit is {limit}")
                return
            if self.piece is not None and size and not word & ERROR_BIT:
                del self._buffer[: _LENGTH.size]
                self._data_left = size
                continue
            if len(self._buffer) < _LENGTH.size + size:
                return
            body = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
            del self._buffer[: _LENGTH.size + size]
            if word & ERROR_BIT:
                self.broken = True
                yield Reset(*_error_fields(body))
                return
            yield body if size else END


def _error_fields(body: bytes) -> tuple[str, str]:
    """The code and message of an error frame; what cannot be read as such is passed on as
    the message of a `remote_error`."""
    text = body.decode("utf-8", "replace")
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError):
        return "remote_error", text or "reset"
    if not isinstance(fields, dict):
        return "remote_error", text
    code, message = fields.get("code"), fields.get("message")
    code = code if isinstance(code, str) and 0 < len(code) <= 64 else "remote_error"
    return code, message if isinstance(message, str) and message else text
