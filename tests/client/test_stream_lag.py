"""A streamed call always ends, even when the connection carrying it lagged: a caller that
stopped reading its socket gets the daemon's `lagged` end once it reads again, and one whose
own buffer dropped events ends its streams `lagged` itself, never an iteration that waits
forever for an end that was skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from meshactors.client import ClientError, MeshClient, RequestContext, _conn, _streams
from tests.client.conftest import NETWORK, LocalDaemon
from tests.client.fakedaemon import fake_daemon

LAGGED_STREAM_WAIT = 60  # seconds the whole exchange may take before the test fails
LAG_TEST_MS = 600_000  # the call's own deadline: the lag, not the deadline, must end it
# chunks the caller may leave unread in its own buffer here: it reads every chunk the daemon
# held for it at once when it reads again, and must not lag on its own meanwhile
UNREAD_CHUNKS_ALLOWED = 1_000_000


@attrs.define(eq=False)
class PausableSocket(trio.abc.Stream):
    """A client's socket whose reads wait while `reading` is unset: a program that stopped
    reading its connection, as far as the daemon can tell."""

    inner: trio.SocketStream
    reading: trio.Event = attrs.field(factory=trio.Event)

    def pause(self) -> None:
        """Read nothing more (a read already waiting for bytes still returns its bytes)."""
        self.reading = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await self.reading.wait()
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_stream_whose_caller_stopped_reading_ends_lagged_once_it_reads_again(
    running: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon ends the call once a chunk finds no room (the serving side is told `lagged`);
    the end it pushes meanwhile is never skipped, so the caller, reading again, gets the chunks
    before the hole and then the `lagged` error, from the daemon, not from its own buffer."""
    monkeypatch.setattr(_streams, "STREAM_BUFFER", UNREAD_CHUNKS_ALLOWED)
    go = trio.Event()

    async def endless(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        await go.wait()  # not before the caller stopped reading
        n = 0
        while True:
            yield n
            n += 1

    sockets: list[PausableSocket] = []
    connect = _conn.connect_unix

    async def connect_pausable(path: Path, retry: _conn.ConnectRetry) -> trio.abc.Stream:
        socket = PausableSocket(await connect(path, retry))
        socket.reading.set()
        sockets.append(socket)
        return socket

    async with MeshClient(running.paths.socket) as server:
        await server.ensure_networks([NETWORK])
        me = (await server.status())["device_id"]
        await server.serve("lan", "endless", endless)
        monkeypatch.setattr(_conn, "connect_unix", connect_pausable)
        async with MeshClient(running.paths.socket) as caller:
            (socket,) = sockets
            stream = caller.rpc_call_stream("lan", me, "endless", timeout_ms=LAG_TEST_MS)
            with server.events() as told:
                async with stream as chunks:
                    socket.pause()
                    go.set()
                    with trio.fail_after(LAGGED_STREAM_WAIT):  # the daemon ends the call
                        async for event in told:
                            if event["kind"] == "rpc_cancelled":
                                break
                    assert event["reason"] == "lagged"
                    socket.reading.set()
                    received = []
                    with trio.fail_after(LAGGED_STREAM_WAIT), pytest.raises(ClientError) as failure:
                        async for n in chunks:  # without the end: waits forever
                            received.append(n)
    assert (failure.value.code, failure.value.message) == (
        "lagged",
        "the connection fell behind the stream",
    )
    assert chunks.daemon_done  # the daemon's own end, not the client's buffer overflowing
    assert received == list(range(len(received)))  # those before the hole, none after it


def stream_event(kind: str, **fields: Any) -> dict[str, Any]:
    """An event of the stream `s1` (the fake daemon's request id), as the daemon sends it."""
    return {"kind": kind, "network": "lan", "request_id": "s1", **fields}


async def test_a_stream_ends_lagged_when_the_clients_own_buffer_dropped_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events the client's connection buffer (EVENT_BUFFER) dropped may hold a stream's
    chunks and end: the stream ends `lagged` after the chunks it got, and leaving its block
    cancels the call at the daemon."""
    monkeypatch.setattr(_conn, "EVENT_BUFFER", 1)  # one event read ahead of routing
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        with trio.fail_after(LAGGED_STREAM_WAIT):
            async with client.rpc_call_stream("lan", "peer", "count") as chunks:
                events = [
                    stream_event("rpc_call_stream_chunk", payload=0),
                    stream_event("rpc_call_stream_chunk", payload=1),  # dropped, and
                    stream_event("rpc_call_stream_end"),  # the end with it
                ]
                await session.send_together(events)
                received = []
                with pytest.raises(ClientError) as failure:
                    async for n in chunks:  # without its end: waits forever
                        received.append(n)
            await session.wait_op("rpc_cancel")
    assert (failure.value.code, failure.value.message) == (
        "lagged",
        "the client dropped 2 events of its connection",
    )
    assert received == [0]
