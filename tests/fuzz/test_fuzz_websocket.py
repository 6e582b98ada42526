"""Fuzz the WebSocket layer as the broker runs it: any bytes from a client, in any chunks, end
in whole messages and then a close with a documented code, never another exception."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from meshactors.websocket import CloseCode, ConnectionClosed, WebSocket
from meshactors.websocket.frames import Opcode, encode_frame
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import mutated

MAX_MESSAGE = 4096  # bytes: small, so oversized frames and messages are easy to draw
OURS = {  # the codes this side closes with on its own account (docs/protocol.md, WebSocket)
    CloseCode.PROTOCOL_ERROR,
    CloseCode.INVALID_DATA,
    CloseCode.MESSAGE_TOO_BIG,
    CloseCode.ABNORMAL,
    CloseCode.NO_STATUS,
}
# the codes a client's own close frame may carry and be reported with (others close 1002)
FROM_CLIENT = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}


def _fragmented(payload: bytes) -> bytes:
    """A BINARY message in two masked frames, as a client sends it."""
    first = bytearray(encode_frame(Opcode.BINARY, payload[:3], mask=True))
    first[0] &= 0x7F  # not final
    return bytes(first) + encode_frame(Opcode.CONTINUATION, payload[3:], mask=True)


GOOD_STREAMS = [
    encode_frame(Opcode.TEXT, b"hello", mask=True)
    + encode_frame(Opcode.PING, b"p", mask=True)
    + encode_frame(Opcode.CLOSE, b"\x03\xe8bye", mask=True),
    _fragmented(b"a fragmented message") + encode_frame(Opcode.BINARY, b"\x00" * 300, mask=True),
    encode_frame(Opcode.BINARY, b"x" * 5000, mask=True),
]

client_bytes = st.binary(max_size=400) | st.one_of(*(mutated(good) for good in GOOD_STREAMS))


async def _serve(data: bytes, cuts: list[int]) -> tuple[int, int]:
    """Feed `data` in pieces to a server-side WebSocket; messages read and the close code."""
    ours, theirs = trio.testing.memory_stream_pair()
    ws = WebSocket(ours, is_client=False, max_message_bytes=MAX_MESSAGE)
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        await theirs.send_all(data[start:end])
    await theirs.send_eof()
    messages = 0
    with trio.fail_after(5):
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as closed:
                return messages, closed.code
            assert isinstance(message, bytes | str) and len(message) <= MAX_MESSAGE
            messages += 1


@fuzz
@given(client_bytes, st.lists(st.integers(0, 400), max_size=6))
def test_any_client_bytes_end_in_messages_then_a_documented_close(
    data: bytes, cuts: list[int]
) -> None:
    cuts = sorted({cut for cut in cuts if cut <= len(data)})
    _, code = trio.run(_serve, data, cuts)
    assert code in OURS or code in FROM_CLIENT
