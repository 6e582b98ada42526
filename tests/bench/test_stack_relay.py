"""The stack relay (scripts/benchlib/relay.py): real processes, a broker, two daemons and
client B, each line from client A forwarded over Unix sockets and trio-websocket and back."""

from __future__ import annotations

import pytest
import trio

from scripts.benchlib.baseline import read_line, relay_chain
from scripts.benchlib.relay import open_stream

TIMEOUT = 60.0  # seconds for the lines to come back


async def _exchange(address: str, lines: list[bytes], answers: int) -> list[bytes]:
    stream = await open_stream(address)
    buffer = bytearray()
    with trio.fail_after(TIMEOUT):
        await stream.send_all(b"".join(line + b"\n" for line in lines))
        received = [await read_line(stream, buffer) for _ in range(answers)]
    await stream.aclose()
    return received


@pytest.mark.e2e
def test_a_line_from_client_a_comes_back_from_client_b_through_the_five_processes() -> None:
    lines = [b"first", b"x" * 16 * 1024, b"last"]  # several at once: batched on the way
    with relay_chain("echo") as address:
        assert trio.run(_exchange, address, lines, len(lines)) == lines


@pytest.mark.e2e
def test_client_b_counts_the_lines_client_a_sent() -> None:
    with relay_chain("sink") as address:
        assert trio.run(_exchange, address, [b"one", b"two", b"three", b"end"], 1) == [b"count 3"]
