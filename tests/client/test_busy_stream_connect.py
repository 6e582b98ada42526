"""A binary stream's connection that the daemon refuses whole, too full to take one more
client (an `unavailable` answer without an id: nothing of its op was handled), is tried again
with the connect backoff within the client's call_timeout, as a connect that found no socket
is; one refused for the whole of it raises that refusal (DaemonBusy, `unavailable`)."""

from __future__ import annotations

import pytest
import trio

from meshactors.client import BinaryStream, ClientError, MeshClient, binary
from tests.client.conftest import NETWORK, LocalDaemon, count_connects

PLACES = 4  # the daemon's clients at once: two programs, and a stream's two ends
STREAM_WAIT = 30.0  # seconds the exchange may take before the test fails
FULL_TIMEOUT = 0.5  # seconds the caller waits for a place that never comes
GREETING = b"hello"  # sent through the stream, and echoed back


async def echo(stream: BinaryStream) -> None:
    """Send back what came, then end."""
    await stream.send_all(await stream.receive_some())
    await stream.send_eof()


async def test_a_stream_opened_while_the_daemon_is_full_gets_in_once_there_is_room(
    local: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.max_clients = PLACES
    socket = (await local.start()).paths.socket
    retried = trio.Event()
    echoed: list[bytes] = []
    async with (
        MeshClient(socket, call_timeout=STREAM_WAIT) as server,
        MeshClient(socket, call_timeout=STREAM_WAIT) as caller,
    ):
        await server.ensure_networks([NETWORK])
        me = (await server.status())["device_id"]
        await server.serve_stream("lan", "echo", echo)

        async def open_echo() -> None:
            async with await caller.open_stream("lan", me, "echo") as stream:
                await stream.send_all(GREETING)
                await stream.send_eof()
                echoed.append(await stream.receive_some())

        with trio.fail_after(STREAM_WAIT):
            async with trio.open_nursery() as nursery:
                count_connects(monkeypatch, binary, "connect_unix", retried)
                async with MeshClient(socket) as filler, MeshClient(socket):  # the last places
                    assert (await filler.status())["clients"] == PLACES
                    nursery.start_soon(open_echo)
                    await retried.wait()  # refused once, and trying again
                # the fillers left: room for both ends of the stream
    assert echoed == [GREETING]


async def test_a_stream_refused_for_its_whole_timeout_raises_the_refusal(
    local: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.max_clients = 1
    socket = (await local.start()).paths.socket
    async with MeshClient(socket, call_timeout=FULL_TIMEOUT) as holder:
        opened = count_connects(monkeypatch, binary, "connect_unix", trio.Event())
        started = trio.current_time()
        with trio.fail_after(STREAM_WAIT), pytest.raises(ClientError) as refused:
            await holder.open_stream("lan", "peer", "echo")
        waited = trio.current_time() - started
    assert refused.value.code == "unavailable"
    assert "clients at once" in refused.value.message
    assert waited >= FULL_TIMEOUT
    assert len(opened) > 1
