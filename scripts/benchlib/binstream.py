"""Binary stream throughput through two daemons and a broker, beside its ceiling: trio-websocket
alone moving 64 KiB messages between two processes, measured in the same run.

The stream's serving end runs in its own process (`python -m scripts.benchlib.binstream serve
SOCK`): it reads everything, hashes it and answers with the SHA-256, so each run also checks
that every byte of the (by default 100 MiB) stream arrived exact.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
import trio_websocket

from meshactors.client import BinaryStream, MeshClient
from scripts.benchlib.meshbench import NETWORK, ROOT, mesh_of

METHOD = "bench_sink"
CHUNK = 1024 * 1024  # bytes per send_all of the stream
WS_MESSAGE = 64 * 1024  # bytes per WebSocket message of the ceiling
MIB = 1024 * 1024


def _block() -> bytes:
    return hashlib.sha256(b"bench").digest() * (CHUNK // 32)


def measure_binary_stream(mib: int) -> dict[str, object]:
    """MB/s of one `mib` MiB stream from daemon A's program to daemon B's, digest checked."""
    with mesh_of(2) as mesh, _process("serve", str(mesh.sockets[1])):
        seconds = trio.run(_send_stream, mesh.sockets[0], mesh.devices[1], mib)
    return {
        "mib": mib,
        "seconds": round(seconds, 3),
        "mb_per_s": round(mib * MIB / seconds / 1e6, 1),
    }


async def _send_stream(sock: Path, peer: str, mib: int) -> float:
    block, digest = _block(), hashlib.sha256()
    async with MeshClient(sock) as client:
        stream = await client.open_stream(NETWORK, peer, METHOD)
        began = time.perf_counter()
        async with stream:
            for _ in range(mib):
                await stream.send_all(block)
                digest.update(block)
            await stream.send_eof()
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        seconds = time.perf_counter() - began
    if answer != digest.digest():
        raise RuntimeError("the stream's bytes did not arrive exact")
    return seconds


async def _serve(sock: str) -> None:
    async def sink(stream: BinaryStream) -> None:
        digest = hashlib.sha256()
        while chunk := await stream.receive_some():
            digest.update(chunk)
        await stream.send_all(digest.digest())
        await stream.send_eof()

    async with MeshClient(Path(sock)) as client:
        await client.serve_stream(NETWORK, METHOD, sink)
        print("ready", flush=True)
        await trio.sleep_forever()


def measure_websocket_ceiling(mib: int) -> dict[str, object]:
    """MB/s of `mib` MiB in WS_MESSAGE messages from this process to a trio-websocket server in
    another, until the server says it has them all."""
    with _process("ws-sink") as server:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        seconds = trio.run(_send_ws, port, mib)
    return {
        "mib": mib,
        "seconds": round(seconds, 3),
        "mb_per_s": round(mib * MIB / seconds / 1e6, 1),
    }


async def _send_ws(port: int, mib: int) -> float:
    message = _block()[:WS_MESSAGE]
    count = mib * MIB // WS_MESSAGE
    async with trio_websocket.open_websocket("127.0.0.1", port, "/", use_ssl=False) as ws:
        await ws.send_message(str(count * WS_MESSAGE))
        began = time.perf_counter()
        for _ in range(count):
            await ws.send_message(message)
        await ws.get_message()  # the server's "done"
        return time.perf_counter() - began


async def _ws_sink() -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        size = int(await ws.get_message())
        received = 0
        while received < size:
            received += len(await ws.get_message())
        await ws.send_message("done")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
        )
        print(listeners.port, flush=True)


@contextmanager
def _process(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.benchlib.binstream", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if args[0] == "serve":
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        trio.run(_serve, sys.argv[2])
    else:
        trio.run(_ws_sink)
