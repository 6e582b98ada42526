"""Reads and writes on a plain socket stream that skip the scheduler passes trio adds.

trio's `receive_some` and `send_all` end every successful call with a schedule point: one
more pass of the run loop (tens of µs here) per message, on the latency path of every hop.
`receive_some` below returns as soon as a read that had to wait gets its bytes (the wait was
the schedule point); a read that finds bytes at once still yields, so a busy socket never
starves the other tasks. `write_nowait` writes from a sync caller what the socket takes now.
Streams that are not a plain socket (TLS, test streams) use trio's calls.
"""

from __future__ import annotations

import os

import trio


def plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under `stream` when it is a plain socket stream, else None."""
    return stream.socket if isinstance(stream, trio.SocketStream) else None


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


def write_nowait(sock: trio.socket.SocketType, data: bytes) -> int | None:
    """Write what the socket takes of `data` now, without yielding: the count written, or None
    when it takes nothing (it would block, is closed, or failed)."""
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        return os.write(fd, data)
    except OSError:
        return None
