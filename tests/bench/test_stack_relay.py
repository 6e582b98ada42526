"""The stack relay (scripts/benchlib/relay.py): real processes, a broker, two daemons and
client B, each line from client A forwarded over Unix sockets and trio-websocket and back."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from scripts.benchlib.baseline import read_line, relay_chain, relay_process
from scripts.benchlib.relay import CONFLICT, open_stream

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


async def _through_the_broker(port: str) -> tuple[bytes | str, int]:
    """A message from a WebSocket on /a to one on /b; the status a second /a is refused with."""
    url = f"ws://127.0.0.1:{port}"
    with trio.fail_after(TIMEOUT):
        async with open_websocket_url(url + "/b") as b, open_websocket_url(url + "/a") as a:
            await a.send_message(b"hello")
            received = await b.get_message()
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(url + "/a"):
                    pass
    return received, refused.value.status_code


@pytest.mark.e2e
def test_the_broker_is_a_websocket_server_that_pairs_one_a_with_one_b() -> None:
    with relay_process("broker") as port:
        assert trio.run(_through_the_broker, port) == (b"hello", CONFLICT)
