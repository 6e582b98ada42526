"""Test helpers: a raw RFC 6455 peer that writes any frame (good or bad) and reads frames back."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from meshactors.websocket.frames import Frame, FrameParser, Opcode, encode_frame

WAIT_S = 5.0  # upper bound for any single expected event in these tests
PEER_MAX_PAYLOAD = 4 * 1024 * 1024  # the raw peer accepts any frame the tests send


def raw_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True, rsv: int = 0) -> bytes:
    """A frame with any opcode, FIN bit and reserved bits (encode_frame only makes good ones)."""
    data = bytearray(encode_frame(Opcode.BINARY, payload, mask=mask))
    data[0] = (0x80 if fin else 0) | rsv | opcode
    return bytes(data)


@attrs.define
class RawPeer:
    """The far end of a WebSocket under test, speaking frames by hand over `stream`."""

    stream: trio.abc.Stream
    is_client: bool  # a client masks what it sends and expects unmasked frames back
    parser: FrameParser = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.parser = FrameParser(not self.is_client, PEER_MAX_PAYLOAD)

    async def send(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        """Send one frame, masked as this peer's role requires."""
        await self.stream.send_all(raw_frame(opcode, payload, mask=self.is_client, fin=fin))

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame with `code` and `reason`."""
        await self.send(Opcode.CLOSE, code.to_bytes(2, "big") + reason.encode())

    async def receive(self) -> Frame:
        """The next frame from the WebSocket under test (fails the test after WAIT_S)."""
        with trio.fail_after(WAIT_S):
            while (frame := self.parser.next_frame()) is None:
                data = await self.stream.receive_some()
                assert data, "the WebSocket under test closed the stream"
                self.parser.feed(data)
        return frame

    async def receive_eof(self) -> bytes:
        """Everything still sent until the stream closes."""
        received = bytearray()
        with trio.fail_after(WAIT_S):
            while data := await self.stream.receive_some():
                received += data
        return bytes(received)


def close_payload(frame: Frame) -> tuple[int, str]:
    """The code and reason of a close frame the peer received."""
    assert frame.opcode is Opcode.CLOSE
    return int.from_bytes(frame.payload[:2], "big"), frame.payload[2:].decode()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of one real loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        client = await trio.testing.open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
    return client, server
