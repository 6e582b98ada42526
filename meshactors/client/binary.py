"""Binary streams for programs: a connection of their own, switched by `stream_open` or
`stream_accept`, read and written as a trio Stream of raw bytes (docs/protocol.md,
"Binary streams"). The length-prefixed framing stays inside this module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.client._conn import ConnectRetry, closed_on_failure, connect_unix
from meshactors.client._frames import answer_data, connection_refused, decode_frame, encode_request
from meshactors.client.errors import (
    ClientError,
    ConnectionLost,
    DaemonBusy,
    DeadlineExceeded,
    ProtocolError,
)
from meshactors.wire.ipc import MAX_FRAME_BYTES
from meshactors.wire.pipe_frames import (
    END_FRAME,
    MAX_STREAM_FRAME_BYTES,
    End,
    FrameParser,
    Reset,
    encode,
)

RECEIVE_BYTES = 256 * 1024  # bytes asked of the socket per read
LOST = "connection_lost"  # the code of a stream whose connection broke under it
# seconds waited past a stream op's own bound for its answer: the daemon may first take up to
# its COMMAND_TIMEOUT (10 s) to hand the op to the network's core
STREAM_DEADLINE_MARGIN = 15.0


class StreamError(ClientError):
    """The stream ended in an error (`code`: cancelled, remote_error, peer_not_active, …)."""


class StreamBroken(StreamError, trio.BrokenResourceError):
    """The stream's connection failed under it (`connection_lost`, e.g. its daemon was killed,
    or the stream's own error when it was read first): a StreamError, and the
    BrokenResourceError a trio Stream raises for a connection that broke."""


@attrs.define(eq=False)
class BinaryStream(trio.abc.HalfCloseableStream):
    """One end of a binary stream: `send_all`, `send_eof` (the end of our data; after it
    `send_all` raises trio.ClosedResourceError and another `send_eof` does nothing),
    `receive_some` (b"" after the other end's data ended; StreamError when the stream failed),
    `aclose`.
    A connection that breaks under it raises StreamBroken from any of them."""

    socket: trio.SocketStream
    info: dict[str, Any]  # the switching op's answer: stream_id, network, peer, method
    _parser: FrameParser = attrs.field(factory=FrameParser)
    _pending: bytearray = attrs.field(factory=bytearray)
    _ended: bool = False
    _failed: Reset | None = None
    _sent_end: bool = False  # our end (send_eof) went out

    @property
    def stream_id(self) -> str:
        return str(self.info["stream_id"])

    @property
    def peer(self) -> str:
        return str(self.info["peer"])

    @property
    def sent_end(self) -> bool:
        """Whether our end of data (`send_eof`) went out."""
        return self._sent_end

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sent_end:  # as trio's HalfCloseableStream says: data after it breaks the stream
            raise trio.ClosedResourceError("our end was sent (send_eof): only reset may follow")
        view = memoryview(data)
        with self._broken():
            for start in range(0, len(view), MAX_STREAM_FRAME_BYTES):
                piece = bytes(view[start : start + MAX_STREAM_FRAME_BYTES])
                await self.socket.send_all(b"".join(encode(piece)))

    async def wait_send_all_might_not_block(self) -> None:
        with self._broken():
            await self.socket.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self._sent_end:  # a second end would break the stream; trio's contract: no-op
            return
        with self._broken():
            await self.socket.send_all(END_FRAME)
        self._sent_end = True

    async def reset(self, message: str) -> None:
        """End the stream in an error both ways (the other end reads remote_error), and close."""
        try:
            with self._broken():
                await self.socket.send_all(b"".join(encode(Reset("remote_error", message))))
        finally:
            await self.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._pending:
            if self._failed is not None:
                raise self._error()
            if self._ended:
                return b""
            with self._broken():
                self.feed(await self.socket.receive_some(RECEIVE_BYTES))
        size = len(self._pending) if max_bytes is None else max_bytes
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    async def finish(self) -> None:
        """Wait until the daemon closes the connection, which it does once both ends ended
        (send_eof first), discarding data the other end still sends; StreamError if the stream
        failed after all (e.g. the other program reset it after its end). The connection
        closed before both ends ended with no error frame (e.g. its daemon died) is
        StreamBroken."""
        while self._failed is None:
            with self._broken():
                data = await self.socket.receive_some(RECEIVE_BYTES)
            if not data and self._sent_end and self._ended:
                return
            self.feed(data)
            self._pending.clear()
        raise self._error()

    def _error(self) -> StreamError:
        """The stream's failure to raise: StreamBroken when its connection broke under it."""
        assert self._failed is not None
        kind = StreamBroken if self._failed.code == LOST else StreamError
        return kind(self._failed.code, self._failed.message)

    @contextlib.contextmanager
    def _broken(self) -> Iterator[None]:
        """Raise a connection that broke as StreamBroken, with the stream's own error if the
        daemon told it before (a send does not read it: there it is `connection_lost`)."""
        try:
            yield
        except trio.BrokenResourceError as exc:
            failed = self._failed or Reset(LOST, f"the connection failed: {exc}")
            raise StreamBroken(failed.code, failed.message) from exc

    def feed(self, data: bytes | bytearray) -> None:
        """Take bytes read from the socket (those after the answer line first); b"", the
        connection closed before the stream finished, breaks it (a cancel, or any failure the
        daemon tells, comes as an error frame first)."""
        if not data:
            if self._failed is None:
                self._failed = Reset(LOST, "the connection closed before the stream finished")
            return
        for item in self._parser.feed(bytes(data)):
            if isinstance(item, bytes):
                self._pending += item
            elif isinstance(item, End):
                self._ended = True
            else:
                self._failed = item

    async def aclose(self) -> None:
        await self.socket.aclose()


async def switch(
    socket: Path, op: str, params: dict[str, Any], timeout: float, own_timeout: float
) -> BinaryStream:
    """Connect and send the switching op as the connection's first request (within `timeout`
    seconds, retried as `connect_unix` says: only while nothing of the op was written, so it
    never runs twice; and, on a new connection, while the daemon refuses the whole connection
    too busy to take it, DaemonBusy, as it handled none of it), and return the stream once
    answered (ClientError with the daemon's code otherwise; ConnectionLost for a connection
    that fails meanwhile). The answer takes at most `own_timeout`, the op's own bound at the
    daemon, and STREAM_DEADLINE_MARGIN more: a daemon that took the op and never answers it
    (hung, or its socket stalled) is DeadlineExceeded, never waited for forever."""
    retry = ConnectRetry.within(timeout)
    first = encode_request(1, op, params)
    allowed = max(0.0, own_timeout) + STREAM_DEADLINE_MARGIN  # the daemon refuses < 0
    while True:
        stream = await connect_unix(socket, retry, first)
        try:
            async with closed_on_failure(stream):
                with trio.move_on_after(allowed):
                    return await _answered(stream, socket)
                raise DeadlineExceeded(op, allowed)
        except DaemonBusy as busy:
            await retry.wait(busy)


async def _answered(stream: trio.SocketStream, socket: Path) -> BinaryStream:
    """Read the switching op's answer line: the stream it made (the bytes after the line are
    its first), or the daemon's error as ClientError (DaemonBusy for its refusal of the whole
    connection at `socket`)."""
    buffer = bytearray()
    while (newline := buffer.find(b"\n")) < 0:
        if len(buffer) > MAX_FRAME_BYTES:
            raise ProtocolError(f"an answer over {MAX_FRAME_BYTES} bytes")
        chunk = await stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            raise ConnectionLost()
        buffer += chunk
    frame = decode_frame(bytes(buffer[:newline]))
    if (busy := connection_refused(frame)) is not None:
        raise DaemonBusy(socket, busy)
    info = answer_data(frame)
    binary = BinaryStream(stream, info)
    if len(buffer) > newline + 1:
        binary.feed(buffer[newline + 1 :])
    return binary
