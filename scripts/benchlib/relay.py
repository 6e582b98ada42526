"""The raw baseline: the same five-process topology as the mesh, forwarding bytes with no logic.

    client A ─unix─▶ hop "daemon A" ─tcp─▶ hop "broker" ─tcp─▶ hop "daemon B" ─unix─▶ client B

Run `python -m scripts.benchlib.relay hop LISTEN FORWARD` or `… echo LISTEN`, where an address is
`unix:/path` or `tcp:PORT` (listen on 127.0.0.1) / `tcp:HOST:PORT` (forward).
"""

from __future__ import annotations

import sys
from functools import partial

import trio

CHUNK = 65536


async def open_stream(address: str) -> trio.abc.Stream:
    """Connect to `unix:/path` or `tcp:HOST:PORT`."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        return await trio.open_unix_socket(rest)
    host, _, port = rest.rpartition(":")
    stream = await trio.open_tcp_stream(host or "127.0.0.1", int(port))
    return stream


async def serve(address: str, handler: object, *, task_status: trio.TaskStatus[None]) -> None:
    """Listen on `unix:/path` or `tcp:PORT` and run handler(stream) per connection."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(rest)
        sock.listen(128)
        listeners: list[trio.SocketListener] = [trio.SocketListener(sock)]
    else:
        listeners = await trio.open_tcp_listeners(int(rest), host="127.0.0.1")
    task_status.started()
    await trio.serve_listeners(handler, listeners)  # type: ignore[arg-type]


async def pipe(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
    """Copy bytes until EOF."""
    while data := await source.receive_some(CHUNK):
        await sink.send_all(data)


async def hop(forward: str, upstream: trio.abc.Stream) -> None:
    """Forward one connection to `forward`, both ways."""
    downstream = await open_stream(forward)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, upstream, downstream)
        nursery.start_soon(pipe, downstream, upstream)


async def echo(stream: trio.abc.Stream) -> None:
    """Send back every byte received."""
    await pipe(stream, stream)


async def sink(stream: trio.abc.Stream) -> None:
    """Count newline-terminated messages until a line `end`, then answer `count N`."""
    count, tail = 0, b""
    while data := await stream.receive_some(CHUNK):
        count += data.count(b"\n")
        tail = (tail + data)[-4:]
        if tail == b"end\n":
            await stream.send_all(b"count %d\n" % (count - 1))
            count, tail = 0, b""


HANDLERS = {"echo": echo, "sink": sink}


async def main(argv: list[str]) -> None:
    mode, listen = argv[0], argv[1]
    handler = partial(hop, argv[2]) if mode == "hop" else HANDLERS[mode]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, listen, handler)
        print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
