"""`WebSocket.send_nowait`: a message written from the calling task without a yield, and what
happens when the socket takes only part of it or another write holds the turn."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.websocket import ConnectionClosed, WebSocket
from meshactors.websocket.frames import Frame, Opcode
from tests.websocket.support import WAIT_S, RawPeer, tcp_pair

MAX = 1000
BIG = 3 * 1024 * 1024  # more than a fresh loopback socket takes at once (the peer reads 4 MiB)


async def server_on_tcp() -> tuple[WebSocket, RawPeer]:
    ours, theirs = await tcp_pair()
    return WebSocket(ours, is_client=False, max_message_bytes=MAX), RawPeer(theirs, is_client=True)


async def test_a_message_the_socket_takes_is_sent_whole() -> None:
    ws, peer = await server_on_tcp()
    assert ws.send_nowait(b"now")
    assert not ws.unsent
    assert await peer.receive() == Frame(Opcode.BINARY, True, b"now")


async def test_a_stream_that_is_not_a_plain_socket_is_refused() -> None:
    ours, _theirs = trio.testing.memory_stream_pair()
    ws = WebSocket(ours, is_client=False, max_message_bytes=MAX)
    assert not ws.send_nowait(b"x")


async def test_a_closed_connection_is_refused() -> None:
    ws, peer = await server_on_tcp()
    await peer.close(1000)
    with trio.fail_after(WAIT_S), pytest.raises(ConnectionClosed):
        await ws.get_message()
    assert not ws.send_nowait(b"x")


async def test_a_cut_write_holds_the_turn_until_flushed_and_order_is_kept() -> None:
    ws, peer = await server_on_tcp()
    big = bytes(range(256)) * (BIG // 256)
    assert ws.send_nowait(big)
    assert ws.unsent  # the socket took part of it
    assert not ws.send_nowait(b"second")  # refused: the rest of `big` must go first
    received: list[Frame] = []

    async def read_both() -> None:
        received.append(await peer.receive())
        received.append(await peer.receive())

    with trio.fail_after(WAIT_S * 4):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_both)
            nursery.start_soon(ws.send_message, b"third")  # waits for the turn
            await ws.flush()
    assert not ws.unsent
    assert received == [Frame(Opcode.BINARY, True, big), Frame(Opcode.BINARY, True, b"third")]


async def test_closing_with_a_cut_write_unflushed_sends_no_close_frame() -> None:
    ws, peer = await server_on_tcp()
    assert ws.send_nowait(b"y" * BIG)
    assert ws.unsent
    with trio.fail_after(WAIT_S):
        await ws.aclose()
    rest = await peer.receive_eof()
    assert len(rest) < BIG  # the frame stays cut; nothing (no close frame) follows it
