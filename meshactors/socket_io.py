"""Reads and writes on a plain socket stream that skip the scheduler pass trio adds.

trio's `receive_some` and `send_all` end every successful call with a schedule point: one
more pass of the run loop (tens of µs here) per message, on the latency path of every hop.
`receive_some` below returns as soon as a read that had to wait gets its bytes (the wait was
the schedule point); a read that finds bytes at once still yields, so a busy socket never
starves the other tasks. `send_all` returns as soon as the socket took every byte: it is for
a connection's one writer, whose loop reaches a schedule point at its queue's `receive`
before every write (and trio's check that no two tasks write at once has nothing to find),
or for writers that take turns by a lock whose acquiring is one (`QuickSocketStream`).
Streams that are not a plain socket (TLS, test streams) use trio's calls.
"""

from __future__ import annotations

import os
import select
from collections.abc import Awaitable, Callable

import attrs
import trio

HANGUP_CHECK = 0.25  # seconds between checks that a peer at its end of input did not hang up


async def receive_some(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes | bytearray:
    """`stream.receive_some(max_bytes)`, one scheduler pass shorter on a plain socket.

    Raises trio.BrokenResourceError (the connection failed) or trio.ClosedResourceError, and
    ValueError for a `max_bytes` below 1 (whose empty answer would read as the end)."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be at least 1")
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


async def send_all(
    stream: trio.abc.SendStream,
    data: bytes | bytearray | memoryview,
    progress: Callable[[], None] | None = None,
) -> None:
    """`stream.send_all(data)`, one scheduler pass shorter on a plain socket: it waits (its
    schedule point) only while the socket takes no more bytes. `progress` is called each time
    the socket took some of them (once at the end on another stream), so a deadline on a slow
    reader can count from its last read rather than from the start of a large write.
    Raises trio.BrokenResourceError (the connection failed) or trio.ClosedResourceError."""
    if not isinstance(stream, trio.SocketStream):
        await stream.send_all(data)
        if progress is not None:
            progress()
        return
    await trio.lowlevel.checkpoint_if_cancelled()
    left = data
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
        if progress is not None:
            progress()
        if sent == len(left):
            return
        left = memoryview(left)[sent:]


@attrs.define(eq=False)
class QuickSocketStream(trio.abc.HalfCloseableStream):
    """A plain socket stream that reads and writes by this module's calls, for trio-websocket:
    its writers take turns by a lock whose acquiring is a schedule point, so a write that
    needs none of its own still has one (each message to the broker a pass shorter). It
    serves one reader and writers that take turns: unlike trio's, it does not catch two
    tasks sending (or receiving) at once."""

    stream: trio.SocketStream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await send_all(self.stream, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is None:  # trio's default size (trio-websocket always gives one)
            return await self.stream.receive_some()
        return await receive_some(self.stream, max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


def hung_up(stream: trio.abc.Stream) -> bool:
    """Whether the peer closed the whole connection, not only its sending side: a Unix
    socket whose peer is closed polls as hung up (one half-closed does not); a stream this
    end closed counts as hung up too."""
    if not isinstance(stream, trio.SocketStream):
        return False
    fd = stream.socket.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, 0)  # POLLHUP is reported whatever is asked
    return any(events & select.POLLHUP for _, events in poller.poll(0))


async def unless_hung_up(stream: trio.abc.Stream, work: Callable[[], Awaitable[object]]) -> bool:
    """Run `work`, checking every HANGUP_CHECK that the peer did not hang up meanwhile (only
    polling tells: see `hung_up`); a hang-up cancels it. Whether `work` ran to its end."""
    finished = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_hang_up, stream, nursery.cancel_scope)
        await work()
        finished = True
        nursery.cancel_scope.cancel()
    return finished


async def _cancel_on_hang_up(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """Cancel `scope` once the peer hung up: looked at first after one HANGUP_CHECK."""
    await trio.sleep(HANGUP_CHECK)
    await wait_hung_up(stream)
    scope.cancel()


async def wait_hung_up(stream: trio.abc.Stream) -> None:
    """Return once the peer hung up, looked at now and every HANGUP_CHECK after (nothing to
    wait on: a socket at its end of input polls readable for good); never for a stream that
    is not a plain socket."""
    while True:
        if hung_up(stream):
            return
        await trio.sleep(HANGUP_CHECK)
