"""`socket_io`: reads that skip trio's extra schedule point only when they already waited;
writes that skip it unless they had to wait for room."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from meshactors.socket_io import QuickSocketStream, receive_some, send_all
from tests.support import steps_of

WAIT_S = 5.0


async def unix_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = socket.socketpair()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(left)),
        trio.SocketStream(trio.socket.from_stdlib_socket(right)),
    )


async def test_a_cancelled_read_takes_no_bytes() -> None:
    ours, theirs = await unix_pair()
    await theirs.send_all(b"ready")
    with trio.CancelScope() as scope:
        scope.cancel()
        await receive_some(ours, 100)
    assert scope.cancelled_caught
    assert await receive_some(ours, 100) == b"ready"  # nothing was lost


async def test_bytes_already_there_are_read_at_a_schedule_point() -> None:
    ours, theirs = await unix_pair()
    await theirs.send_all(b"ready")
    with trio.testing.assert_checkpoints():  # a busy socket starves no other task
        assert await receive_some(ours, 100) == b"ready"


async def test_a_read_waits_for_bytes_that_come_later() -> None:
    ours, theirs = await unix_pair()
    got: list[bytes | bytearray] = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            got.append(await receive_some(ours, 100))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # parked until the socket is readable
        await theirs.send_all(b"late")
    assert got == [b"late"]


async def test_end_of_stream_closed_and_broken_sockets() -> None:
    ours, theirs = await unix_pair()
    await theirs.aclose()
    with trio.fail_after(WAIT_S):
        assert await receive_some(ours, 100) == b""
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await receive_some(ours, 100)


async def test_a_reset_connection_is_broken() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    client = await trio.testing.open_stream_to_socket_listener(listeners[0])
    server = await listeners[0].accept()
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1, 0, 0, 0, 0, 0, 0, 0]))
    await client.send_all(b"x")
    await server.aclose()  # linger 0 with unread bytes: the peer sees a reset
    with trio.fail_after(WAIT_S), pytest.raises(trio.BrokenResourceError):
        while True:
            await receive_some(client, 100)
    await listeners[0].aclose()


async def test_other_streams_read_through_trio() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(b"mem")
    assert await receive_some(ours, 100) == b"mem"


async def test_a_write_the_socket_takes_at_once_is_no_schedule_point() -> None:
    ours, theirs = await unix_pair()
    assert await steps_of(send_all(ours, b"hello")) == 0  # no pass of the run loop
    assert await receive_some(theirs, 100) == b"hello"


async def test_a_quick_socket_stream_is_the_socket_stream_with_these_writes() -> None:
    ours, theirs = await unix_pair()
    quick = QuickSocketStream(ours)
    assert await steps_of(quick.send_all(b"ping")) == 0
    assert await receive_some(theirs, 100) == b"ping"
    await theirs.send_all(b"pong")
    assert await quick.receive_some(100) == b"pong"
    await theirs.send_all(b"again")
    assert await quick.receive_some() == b"again"  # trio's default size
    await quick.wait_send_all_might_not_block()
    await quick.send_eof()
    assert await receive_some(theirs, 100) == b""
    await quick.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await quick.send_all(b"closed")


async def test_a_cancelled_write_sends_nothing() -> None:
    ours, theirs = await unix_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        await send_all(ours, b"never")
    assert scope.cancelled_caught
    await send_all(ours, b"sent")
    assert await receive_some(theirs, 100) == b"sent"


async def test_a_write_waits_for_room_and_sends_every_byte_in_order() -> None:
    ours, theirs = await unix_pair()
    data = bytes(range(256)) * 40_000  # ~10 MB: more than the socket's buffers take at once
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all, ours, data)
        await trio.testing.wait_all_tasks_blocked()  # parked until the socket has room
        assert not received
        with trio.fail_after(WAIT_S):
            while len(received) < len(data):
                received += await receive_some(theirs, 1 << 20)
    assert received == data


async def test_writes_to_closed_half_closed_and_hung_up_sockets() -> None:
    ours, theirs = await unix_pair()
    await ours.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await send_all(ours, b"after eof")
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await send_all(ours, b"after close")
    ours, theirs = await unix_pair()
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await send_all(ours, b"to nobody")


async def test_other_streams_write_through_trio() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await send_all(ours, b"mem")
    assert await receive_some(theirs, 100) == b"mem"


async def test_a_read_of_less_than_one_byte_is_refused() -> None:
    ours, _ = await unix_pair()
    with pytest.raises(ValueError):
        await receive_some(ours, 0)  # its empty answer would read as the end of the stream
