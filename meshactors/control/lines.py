"""Reading newline-delimited frames from a stream with a size cap that never loses sync."""

from __future__ import annotations

import attrs
import trio

from meshactors.socket_io import receive_some

RECEIVE_CHUNK = 64 * 1024  # bytes asked of the socket per read


@attrs.frozen
class Oversized:
    """Stands in for a line longer than the cap; the reader skipped to its end."""

    length: int


@attrs.define
class LineReader:
    """Yields complete lines (without the newline) or `Oversized` markers; b"" never appears."""

    stream: trio.abc.ReceiveStream
    max_line: int
    buffer: bytearray = attrs.field(factory=bytearray)
    _skipping: int = 0  # bytes of an oversized line discarded so far, while skipping
    _ended: bool = False  # the stream ended: nothing more to read

    def feed_prefix(self, data: bytes) -> None:
        """Put back bytes already read (e.g. while sniffing the protocol)."""
        self.buffer[:0] = data

    async def next_line(self) -> bytes | Oversized | None:
        """The next line, an `Oversized` marker, or None at end of stream. Bytes after the
        last newline at the end of the stream are a line too: a program may end its last
        request with its end of input (`printf '{…}' | nc -U`)."""
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self.buffer[:newline])
                del self.buffer[: newline + 1]
                if self._skipping:
                    marker = Oversized(self._skipping + len(line) + 1)
                    self._skipping = 0
                    return marker
                if len(line) + 1 > self.max_line:
                    return Oversized(len(line) + 1)
                if line.strip():
                    return line
                continue
            if len(self.buffer) >= self.max_line or self._skipping:
                self._skipping += len(self.buffer)
                self.buffer.clear()
            if self._ended:
                return None
            chunk = await receive_some(self.stream, RECEIVE_CHUNK)
            if not chunk:
                self._ended = True
                chunk = b"\n"  # ends the last line, if any (a blank one is skipped)
            self.buffer += chunk
