"""One open WebSocket over a trio stream, read by whichever task calls `get_message`.

There is no background reader: control frames (ping, pong, close) are handled inside
`get_message`, so a received message reaches its reader without a task hop. Writers from
several tasks take turns; an uncontended write costs no extra scheduler pass, and
`send_nowait` writes from a task without yielding at all when the socket takes the bytes.
"""

from __future__ import annotations

import os
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import attrs
import trio

from meshactors.socket_io import plain_socket, receive_some, write_nowait
from meshactors.websocket.frames import (
    CloseCode,
    Frame,
    FrameParser,
    Opcode,
    ProtocolViolation,
    encode_frame,
    is_data,
)
from meshactors.websocket.handshake import HandshakeFailed, upgrade_client

RECEIVE_CHUNK = 64 * 1024  # bytes read from the socket at a time
MAX_CLOSE_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes with its code


class ConnectionClosed(Exception):
    """The WebSocket is closed (by either side, or the connection was lost)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


@attrs.define(eq=False)
class WebSocket:
    """An open WebSocket: one reader at a time, any number of writers."""

    stream: trio.abc.Stream
    is_client: bool
    max_message_bytes: int
    _parser: FrameParser = attrs.field(init=False)
    closed: ConnectionClosed | None = attrs.field(default=None, init=False)
    _close_sent: bool = attrs.field(default=False, init=False)
    _broken: bool = attrs.field(default=False, init=False)  # a write was cut mid-frame
    _writing: bool = attrs.field(default=False, init=False)
    _reading: bool = attrs.field(default=False, init=False)  # a task is in _receive_more
    _unsent: bytes = attrs.field(default=b"", init=False)  # a `send_nowait` the socket cut short
    _socket: trio.socket.SocketType | None = attrs.field(default=None, init=False)  # if plain
    _writers: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _pings: dict[bytes, trio.Event] = attrs.field(factory=dict, init=False)
    _pending_control: list[bytes] = attrs.field(factory=list, init=False)  # after this write
    _fragments: list[bytes] = attrs.field(factory=list, init=False)
    _fragment_opcode: Opcode | None = attrs.field(default=None, init=False)
    _fragment_bytes: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._parser = FrameParser(not self.is_client, self.max_message_bytes)
        self._socket = plain_socket(self.stream)

    def feed(self, data: bytes | bytearray) -> None:
        """Bytes read past the upgrade, which already belong to the WebSocket."""
        self._parser.feed(data)

    async def get_message(self) -> bytes | str:
        """The next whole message (TEXT as str, BINARY as bytes); raises ConnectionClosed."""
        while True:
            if self.closed is not None:
                raise self._closed_again()
            try:
                frame = self._parser.next_frame()
                if frame is None:
                    await self._receive_more()
                    continue
                if is_data(frame.opcode):
                    message = self._assemble(frame)
                    if message is not None:
                        return message
                else:
                    await self._control(frame)
            except ProtocolViolation as violation:
                await self._fail(violation.code, violation.reason)

    async def send_message(self, message: bytes | str) -> None:
        """Send one message: str as TEXT, bytes as BINARY."""
        if isinstance(message, str):
            await self._send(Opcode.TEXT, message.encode("utf-8"))
        else:
            await self._send(Opcode.BINARY, message)

    def send_nowait(self, message: bytes) -> bool:
        """Write a BINARY message from the calling task without yielding, if no write is under
        way and the stream is a plain socket that takes the bytes now; False: nothing was sent.

        When the socket takes only part of the frame, the rest waits in the connection (other
        writes wait behind it) and the owner must call `flush` soon.
        """
        if self._socket is None or self._writing or self._close_sent or self._broken:
            return False
        if self.closed is not None:
            return False
        data = encode_frame(Opcode.BINARY, message, mask=self.is_client)
        sent = write_nowait(self._socket, data)
        if sent is None:  # would block, or the connection is gone: the queued path finds out
            return False
        if sent < len(data):
            self._unsent, self._writing = data[sent:], True
        return True

    @property
    def unsent(self) -> bool:
        """Whether a `send_nowait` left part of its frame for `flush`."""
        return bool(self._unsent)

    async def flush(self) -> None:
        """Finish writing what a `send_nowait` left unsent (nothing when it sent all)."""
        if self._unsent:
            rest, self._unsent = self._unsent, b""
            await self._write_held(rest)

    async def ping(self) -> None:
        """Send a ping and wait for its pong; raises ConnectionClosed if the connection ends."""
        payload = os.urandom(8)
        answered = self._pings[payload] = trio.Event()
        try:
            await self._send(Opcode.PING, payload)
            await answered.wait()
        finally:
            self._pings.pop(payload, None)
        if self.closed is not None:
            raise self._closed_again()

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close: send our close frame, wait for the peer's (the caller bounds the wait)."""
        if self._unsent:
            self._broken = True  # its owner never finished the frame: nothing may follow it
        try:
            if not self._close_sent and not self._broken and self.closed is None:
                await self._send_close(code, reason)
            # another task reading: closing the stream below ends its read, and what it reads
            # is its own (its frames are not ours to drop while we wait for the peer's close)
            while self.closed is None and not self._broken and not self._reading:
                frame = self._parser.next_frame()
                if frame is None:
                    await self._receive_more()
                elif frame.opcode is Opcode.CLOSE:
                    self._closed(*_close_payload(frame.payload))
        except (ConnectionClosed, ProtocolViolation, trio.BusyResourceError):
            pass  # Busy: another task is reading (TLS streams say so themselves)
        finally:
            if self.closed is None:
                self._closed(code, reason)
            await self.stream.aclose()

    async def _receive_more(self) -> None:
        self._reading = True
        try:
            data = await receive_some(self.stream, RECEIVE_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        finally:
            self._reading = False
        if not data:
            raise self._closed(CloseCode.ABNORMAL, "connection lost")
        self._parser.feed(data)

    def _assemble(self, frame: Frame) -> bytes | str | None:
        """Add a data frame to the message being built; the message once it is whole."""
        if frame.opcode is Opcode.CONTINUATION:
            if self._fragment_opcode is None:
                raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "continuation without a start")
        elif self._fragment_opcode is not None:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        elif frame.fin:
            return _message(frame.opcode, frame.payload)
        else:
            self._fragment_opcode = frame.opcode
        self._fragment_bytes += len(frame.payload)
        if self._fragment_bytes > self.max_message_bytes:
            raise ProtocolViolation(
                CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_message_bytes} bytes"
            )
        self._fragments.append(frame.payload)
        if not frame.fin:
            return None
        opcode, payload = self._fragment_opcode, b"".join(self._fragments)
        self._fragments, self._fragment_opcode, self._fragment_bytes = [], None, 0
        return _message(opcode, payload)

    async def _control(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PING:
            if not self._close_sent:
                await self._send_control(Opcode.PONG, frame.payload)
        elif frame.opcode is Opcode.PONG:
            waiter = self._pings.get(frame.payload)
            if waiter is not None:
                waiter.set()
        else:
            code, reason = _close_payload(frame.payload)
            if not self._close_sent:
                with suppress(ConnectionClosed):
                    await self._send_close(_echo_code(code), "", control=True)
            self._closed(code, reason)

    async def _fail(self, code: CloseCode, reason: str) -> None:
        """Answer a protocol violation with a close frame and end the connection."""
        if not self._close_sent:
            with suppress(ConnectionClosed):
                await self._send_close(code, reason, control=True)
        self._closed(code, reason)

    async def _send_close(self, code: int, reason: str, *, control: bool = False) -> None:
        cut = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")
        payload = struct.pack("!H", code) + cut.encode("utf-8")  # whole characters only
        if control:
            await self._send_control(Opcode.CLOSE, payload)
        else:
            await self._send(Opcode.CLOSE, payload)
        self._close_sent = True

    async def _send_control(self, opcode: Opcode, payload: bytes) -> None:
        """Answer from the reading task without waiting on a writer: a write in progress
        (perhaps stuck on a peer that stopped reading) sends it when it finishes."""
        if self._writing and not self._close_sent:
            self._pending_control.append(encode_frame(opcode, payload, mask=self.is_client))
        else:
            await self._send(opcode, payload)

    async def _send(self, opcode: Opcode, payload: bytes) -> None:
        data = encode_frame(opcode, payload, mask=self.is_client)
        while self._writing:
            await self._writers.park()
        # Checked once it is our turn: the write before ours may have closed or broken the stream.
        if self.closed is not None:
            raise self._closed_again()
        if self._close_sent or self._broken:
            raise ConnectionClosed(CloseCode.NORMAL, "closing")
        self._writing = True
        await self._write_held(data)

    async def _write_held(self, data: bytes) -> None:
        """Write `data` while holding the write turn (`_writing`), then pass the turn on."""
        try:
            await self.stream.send_all(data)
            while self._pending_control:
                queued, self._pending_control = b"".join(self._pending_control), []
                await self.stream.send_all(queued)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._closed(CloseCode.ABNORMAL, "connection lost") from None
        except BaseException:
            self._broken = True  # cancelled mid-frame: the stream can carry nothing more
            raise
        finally:
            self._writing = False
            self._writers.unpark()

    def _closed(self, code: int, reason: str) -> ConnectionClosed:
        """Record the first close (waking ping waiters); returns it, fresh, for raising."""
        if self.closed is None:
            self.closed = ConnectionClosed(code, reason)
            for waiter in self._pings.values():
                waiter.set()
        return self._closed_again()

    def _closed_again(self) -> ConnectionClosed:
        """A new exception for the recorded close: one per raise, so tracebacks do not pile up."""
        assert self.closed is not None
        return ConnectionClosed(self.closed.code, self.closed.reason)


def _message(opcode: Opcode | None, payload: bytes) -> bytes | str:
    if opcode is Opcode.TEXT:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(CloseCode.INVALID_DATA, "TEXT message is not UTF-8") from None
    return payload


def _echo_code(code: int) -> int:
    """The code to answer a peer's close with: theirs when it may be sent, else 1000."""
    unsendable = {CloseCode.NO_STATUS, CloseCode.ABNORMAL, 1015}
    return code if 1000 <= code < 5000 and code not in unsendable else CloseCode.NORMAL


def _close_payload(payload: bytes) -> tuple[int, str]:
    """The code and reason a close frame carries (1005 when it has none); raises
    ProtocolViolation for a truncated frame, a code no endpoint may send, or a non-UTF-8 reason."""
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) < 2:
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte code")
    (code,) = struct.unpack_from("!H", payload)
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code < 5000):
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        return code, payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None


@asynccontextmanager
async def open_websocket(
    url: str, *, connect_timeout: float, close_timeout: float, max_message_bytes: int
) -> AsyncIterator[WebSocket]:
    """Connect to a ws:// or wss:// URL; on exit close, waiting at most `close_timeout`.

    Raises HandshakeFailed, OSError or trio.TooSlowError when it cannot connect.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeFailed(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
        try:
            if secure:
                stream = trio.SSLStream(
                    stream,
                    ssl.create_default_context(),
                    server_hostname=parts.hostname,
                    https_compatible=True,
                )
            leftover = await upgrade_client(stream, parts.netloc, path)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    ws = WebSocket(stream, is_client=True, max_message_bytes=max_message_bytes)
    ws.feed(leftover)
    try:
        yield ws
    finally:
        with trio.move_on_after(close_timeout, shield=True):
            await ws.aclose()
