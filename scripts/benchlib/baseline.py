"""Measure the stack relay (scripts/benchlib/relay.py): round trips and one-way throughput."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import trio

from scripts.benchlib.relay import open_stream

ROOT = Path(__file__).resolve().parents[2]
LARGE = 16 * 1024  # bytes of a large message (the 16 KiB throughput figure)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def relay_process(*args: str) -> Iterator[str]:
    """Run `python -m scripts.benchlib.relay ARGS` until the block ends; yields the last word of
    its `ready` line (the broker's port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.benchlib.relay", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[:1] == ["ready"], f"relay {args[0]} did not start"
        yield ready[-1]
    finally:
        process.kill()
        process.wait()


@contextmanager
def relay_chain(client_b: str) -> Iterator[str]:
    """Start the stack relay's broker, daemon B, daemon A and client B (`echo` or `sink`) as four
    processes; yields the address client A connects to."""
    with tempfile.TemporaryDirectory(prefix="relay-") as tmp, ExitStack() as processes:
        near, far = f"unix:{tmp}/a.sock", f"unix:{tmp}/b.sock"
        port = processes.enter_context(relay_process("broker"))
        processes.enter_context(relay_process("daemon", far, f"ws://127.0.0.1:{port}/b"))
        processes.enter_context(relay_process("daemon", near, f"ws://127.0.0.1:{port}/a"))
        processes.enter_context(relay_process(client_b, far))
        yield near


async def read_line(stream: trio.abc.Stream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        buffer += await stream.receive_some(65536)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def round_trips(address: str, count: int, size: int) -> list[float]:
    """Sequential ping-pongs of `size`-byte messages; seconds each."""
    stream = await open_stream(address)
    samples = await relay_block(stream, bytearray(), count, size)
    await stream.aclose()
    return samples


async def relay_block(
    stream: trio.abc.Stream, buffer: bytearray, count: int, size: int
) -> list[float]:
    """`count` ping-pongs of `size`-byte messages on an open stream; seconds each."""
    message = b"x" * (size - 1) + b"\n"
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        await stream.send_all(message)
        await read_line(stream, buffer)
        samples.append(time.perf_counter() - began)
    return samples


async def one_way(address: str, count: int, size: int) -> float:
    """Messages per second from client A to client B, counted by B."""
    stream = await open_stream(address)
    message = b"x" * (size - 1) + b"\n"
    batch = message * 256
    began = time.perf_counter()
    for _ in range(count // 256):
        await stream.send_all(batch)
    await stream.send_all(b"end\n")
    answer = await read_line(stream, bytearray())
    elapsed = time.perf_counter() - began
    await stream.aclose()
    received = int(answer.split()[1])
    return received / elapsed


def measure_baseline(flood_count: int, size: int = 128) -> dict[str, object]:
    """The baseline's one-way figures for the report, at `size` and at LARGE bytes (its round
    trips are measured beside the mesh's: scripts/benchlib/rpcpair.py)."""
    with relay_chain("sink") as address:
        rate = trio.run(one_way, address, flood_count, size)
    with relay_chain("sink") as address:
        large = trio.run(one_way, address, max(256, flood_count // (LARGE // size)), LARGE)
    return {
        "one_way_msgs_per_s": round(rate),
        "one_way_16k_msgs_per_s": round(large),
        "one_way_16k_mb_per_s": round(large * LARGE / 1e6, 1),
    }


if __name__ == "__main__":
    print(measure_baseline(200_000))
