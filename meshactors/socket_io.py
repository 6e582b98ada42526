"""Reads and writes on a plain socket stream that skip the scheduler pass trio adds.

trio's `receive_some` and `send_all` end every successful call with a schedule point: one
more pass of the run loop (tens of µs here) per message, on the latency path of every hop.
`receive_some` below returns as soon as a read that had to wait gets its bytes (the wait was
the schedule point); a read that finds bytes at once still yields, so a busy socket never
starves the other tasks. `send_all` returns as soon as the socket took every byte: it is for
a connection's one writer, whose loop reaches a schedule point at its queue's `receive`
before every write (and trio's check that no two tasks write at once has nothing to find).
Streams that are not a plain socket (TLS, test streams) use trio's calls.
"""

from __future__ import annotations

import os

import trio


async def receive_some(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes | bytearray:
    """`stream.receive_some(max_bytes)`, one scheduler pass shorter on a plain socket.

    Raises trio.BrokenResourceError (the connection failed) or trio.ClosedResourceError."""
    if not isinstance(stream, trio.SocketStream):
        return await stream.receive_some(max_bytes)
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    while True:
        fd = stream.socket.fileno()  # -1 once closed: never a stale number reused elsewhere
        if fd < 0:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(stream.socket)
            waited = True
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()  # the bytes are ours: keep them
        return data


async def send_all(stream: trio.abc.SendStream, data: bytes) -> None:
    """`stream.send_all(data)`, one scheduler pass shorter on a plain socket: it waits (its
    schedule point) only while the socket takes no more bytes.
    Raises trio.BrokenResourceError (the connection failed) or trio.ClosedResourceError."""
    if not isinstance(stream, trio.SocketStream):
        await stream.send_all(data)
        return
    await trio.lowlevel.checkpoint_if_cancelled()
    left: bytes | memoryview = data
    while True:
        fd = stream.socket.fileno()  # -1 once closed: never a stale number reused elsewhere
        if fd < 0 or stream.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("the stream was closed")
        try:
            sent = os.write(fd, left)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(stream.socket)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent == len(left):
            return
        left = memoryview(left)[sent:]
