"""The stack relay: the mesh's five processes and its stack (Unix sockets, trio-websocket, one
memory channel per direction), with no mesh logic and no JSON (issue 17 item 7).

    client A ─unix─▶ "daemon A" ─ws─▶ "broker" ◀─ws─ "daemon B" ◀─unix─ client B

As in the mesh, both daemons connect to the broker and each client to its daemon. Every middle
process reads a socket in one task and hands each message through one bounded memory channel
to the task that is the other socket's only writer; a writer drains what is queued
(`receive_nowait`) into one write or one WebSocket message, as the daemon's and the broker's
writers do. Unix side: newline-delimited lines, read as the control socket reads them; WebSocket
side: binary messages, each one line or a drained batch of lines, under the broker's size cap.

    python -m scripts.benchlib.relay broker                # prints `ready PORT`
    python -m scripts.benchlib.relay daemon unix:PATH ws://127.0.0.1:PORT/a   # or …/b
    python -m scripts.benchlib.relay echo|sink unix:PATH   # client B, connected to daemon B

The broker pairs one connection on `/a` with one on `/b` (one session per chain: the bench
starts a chain per measurement).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from meshactors.broker.limits import MAX_BROKER_MESSAGE_BYTES
from meshactors.broker.server import RECEIVE_BUFFER_BYTES
from meshactors.control.lines import LineReader, Oversized
from meshactors.wire.ipc import MAX_FRAME_BYTES

CHUNK = 65536  # bytes a client B reads at a time
QUEUE_MESSAGES = 1024  # messages a reader may queue for its writer before it waits
SIDES = {"/a": "/b", "/b": "/a"}  # broker paths, each paired with the other
CONFLICT = 409  # the broker's answer to a second connection on a side already taken


async def open_stream(address: str) -> trio.abc.Stream:
    """Connect to `unix:/path`."""
    kind, _, path = address.partition(":")
    if kind != "unix":
        raise ValueError(f"not a unix: address: {address}")
    return await trio.open_unix_socket(path)


async def write_batches(
    receive: trio.MemoryReceiveChannel[bytes], write: Callable[[bytes], Awaitable[None]]
) -> None:
    """A socket's one writer: each write carries the first message and everything queued behind
    it, joined by newlines, up to the broker's message cap; ends when the channel closes."""
    carry: bytes | None = None
    while True:
        try:
            first = carry if carry is not None else await receive.receive()
        except trio.EndOfChannel:
            return
        carry = None
        batch, size = [first], len(first)
        while True:
            try:
                queued = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if size + 1 + len(queued) > MAX_BROKER_MESSAGE_BYTES:
                carry = queued
                break
            batch.append(queued)
            size += 1 + len(queued)
        await write(b"\n".join(batch))


async def read_lines(stream: trio.abc.Stream, send: trio.MemorySendChannel[bytes]) -> None:
    """A Unix socket's reader: every line, as the control socket reads it, into `send`."""
    reader = LineReader(stream, MAX_FRAME_BYTES)
    async with send:
        while (line := await reader.next_line()) is not None:
            if not isinstance(line, Oversized):  # the bench never sends one
                await send.send(line)


async def read_messages(ws: WebSocketConnection, send: trio.MemorySendChannel[bytes]) -> None:
    """A WebSocket's reader: every message into `send`, until the connection closes."""
    async with send:
        try:
            while True:
                message = await ws.get_message()
                await send.send(message if isinstance(message, bytes) else message.encode())
        except ConnectionClosed:
            return


async def until_first_ends(*tasks: Callable[[], Awaitable[None]]) -> None:
    """Run the tasks; when one ends (its peer hung up), cancel the others."""
    async with trio.open_nursery() as nursery:

        async def run(task: Callable[[], Awaitable[None]]) -> None:
            await task()
            nursery.cancel_scope.cancel()

        for task in tasks:
            nursery.start_soon(run, task)


async def relay(stream: trio.abc.Stream, ws: WebSocketConnection) -> None:
    """A daemon's session: lines from `stream` to `ws` and messages from `ws` to `stream`."""
    to_ws, for_ws = trio.open_memory_channel[bytes](QUEUE_MESSAGES)
    to_unix, for_unix = trio.open_memory_channel[bytes](QUEUE_MESSAGES)

    async def write_unix(data: bytes) -> None:
        await stream.send_all(data + b"\n")

    await until_first_ends(
        partial(read_lines, stream, to_ws),
        partial(write_batches, for_ws, ws.send_message),
        partial(read_messages, ws, to_unix),
        partial(write_batches, for_unix, write_unix),
    )


async def daemon_session(url: str, stream: trio.abc.Stream) -> None:
    """One client's connection to "daemon A" or "B": open its WebSocket to the broker, relay."""
    async with (
        stream,
        open_websocket_url(
            url, max_message_size=MAX_BROKER_MESSAGE_BYTES, receive_buffer_size=RECEIVE_BUFFER_BYTES
        ) as ws,
    ):
        await relay(stream, ws)


@attrs.define
class Pairing:
    """The broker's two sides: each connection's outgoing channel, by path."""

    outboxes: dict[str, trio.MemorySendChannel[bytes]] = attrs.field(factory=dict)
    both: trio.Event = attrs.field(factory=trio.Event)


async def broker_session(pairing: Pairing, request: WebSocketRequest) -> None:
    """One side's connection: once both are in, its messages go to the other side's writer."""
    path = request.path
    if path not in SIDES or path in pairing.outboxes:
        await request.reject(CONFLICT)
        return
    ws = await request.accept()
    outbox, queued = trio.open_memory_channel[bytes](QUEUE_MESSAGES)
    pairing.outboxes[path] = outbox
    if len(pairing.outboxes) == len(SIDES):
        pairing.both.set()
    await pairing.both.wait()
    await until_first_ends(
        partial(read_messages, ws, pairing.outboxes[SIDES[path]].clone()),
        partial(write_batches, queued, ws.send_message),
    )


async def serve_unix(path: str, handler: Callable[[trio.SocketStream], Awaitable[None]]) -> None:
    """Listen on the Unix socket `path`, print `ready`, and run handler(stream) per connection."""
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [trio.SocketListener(sock)])
        print("ready", flush=True)


async def echo(stream: trio.abc.Stream) -> None:
    """Client B: send back every byte received."""
    while data := await stream.receive_some(CHUNK):
        await stream.send_all(data)


async def sink(stream: trio.abc.Stream) -> None:
    """Client B: count newline-terminated messages until a line `end`, then answer `count N`."""
    count, tail = 0, b""
    while data := await stream.receive_some(CHUNK):
        count += data.count(b"\n")
        tail = (tail + data)[-4:]
        if tail == b"end\n":
            await stream.send_all(b"count %d\n" % (count - 1))
            count, tail = 0, b""


CLIENTS = {"echo": echo, "sink": sink}


async def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "broker":
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve_websocket,
                    partial(broker_session, Pairing()),
                    "127.0.0.1",
                    0,
                    None,
                    max_message_size=MAX_BROKER_MESSAGE_BYTES,
                    receive_buffer_size=RECEIVE_BUFFER_BYTES,
                )
            )
            print(f"ready {server.port}", flush=True)
    elif mode == "daemon":
        await serve_unix(argv[1].partition(":")[2], partial(daemon_session, argv[2]))
    else:
        stream = await open_stream(argv[1])
        print("ready", flush=True)
        await CLIENTS[mode](stream)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
