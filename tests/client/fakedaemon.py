"""A stand-in daemon on a real Unix socket for what a real one cannot be made to do on cue:
send a `lagged` frame, close a connection unanswered, hang up in the middle of a client's
replay, leave an op unanswered, hold its answer or refuse it. It answers every other op with
success and sends whatever event frames the test hands it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.client import MeshClient
from meshactors.client.mesh import DEFAULT_CALL_TIMEOUT

ANSWERS: dict[str, dict[str, Any]] = {
    "events_subscribe": {"client_id": "c1", "last_event_id": 0},
    "channel_subscribe": {"retained": 0},
    "stream_open": {"stream_id": "s1", "network": "lan", "peer": "peer", "method": "bulk"},
    "rpc_call_stream": {"request_id": "s1"},
    "state_list": {"entries": [], "next_cursor": None},
}
SWITCHING = ("stream_open", "stream_accept")  # after their answer, the connection is raw bytes


@attrs.define(eq=False)
class FakeConnection:
    """One client connection: the ops it asked for, and a way to send it events or hang up."""

    stream: trio.SocketStream
    ops: list[str] = attrs.field(factory=list)
    _write_lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def send(self, frame: dict[str, Any]) -> None:
        """Write one frame (an event, or an answer) to the client."""
        async with self._write_lock:
            await self.stream.send_all(json.dumps(frame).encode() + b"\n")

    async def send_together(self, frames: list[dict[str, Any]]) -> None:
        """Write frames in one write: the client reads them at once, and buffers them all
        before it routes the first."""
        async with self._write_lock:
            await self.stream.send_all(b"".join(json.dumps(f).encode() + b"\n" for f in frames))

    async def wait_op(self, op: str, times: int = 1) -> None:
        """Wait until the client asked for `op` on this connection (`times` times in all)."""
        while self.ops.count(op) < times:
            changed = self._changed
            await changed.wait()

    async def hang_up(self) -> None:
        """Close the connection, as a daemon that went away does."""
        await self.stream.aclose()

    def record(self, op: str) -> None:
        self.ops.append(op)
        self._changed.set()
        self._changed = trio.Event()


@attrs.define(eq=False)
class FakeDaemon:
    """Accepts connections on `path`; each is handed to the test by `next_session`."""

    path: Path
    hang_up_on: set[str] = attrs.field(factory=set)  # ops answered by closing the connection
    never_answered: set[str] = attrs.field(factory=set)  # ops left unanswered (a busy daemon)
    held: dict[str, trio.Event] = attrs.field(factory=dict)  # ops answered once it is set
    refused: dict[str, str] = attrs.field(factory=dict)  # ops answered with this error code
    answers: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # ops answered with this
    # data instead of ANSWERS'
    closed_at_once: int = 0  # connections to come closed unread, as a daemon past MAX_REFUSING
    received: Counter[str] = attrs.field(factory=Counter)  # ops read, on all connections
    _send: trio.MemorySendChannel[FakeConnection] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[FakeConnection] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[FakeConnection](100)

    async def next_session(self) -> FakeConnection:
        """The next connection a client made."""
        return await self._receive.receive()

    async def serve(self, stream: trio.SocketStream) -> None:
        if self.closed_at_once:
            self.closed_at_once -= 1
            await stream.aclose()
            return
        session = FakeConnection(stream)
        self._send.send_nowait(session)
        buffer = b""
        try:
            while chunk := await stream.receive_some(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    op = request["op"]
                    session.record(op)
                    self.received[op] += 1
                    if op in self.hang_up_on:
                        await session.hang_up()
                        return
                    if op in self.never_answered:
                        continue
                    if op in self.held:  # nothing after it is read meanwhile
                        await self.held[op].wait()
                    if op in self.refused:
                        error = {"code": self.refused[op], "message": f"{op} refused"}
                        await session.send({"id": request["id"], "ok": False, "error": error})
                        continue
                    data = self.answers.get(op, ANSWERS.get(op, {}))
                    await session.send({"id": request["id"], "ok": True, "data": data})
                    if op in SWITCHING:  # what the client sends next is left unread
                        await trio.sleep_forever()  # returning would close the connection
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def fake_daemon(path: Path) -> AsyncIterator[FakeDaemon]:
    """A FakeDaemon listening on `path` for the block."""
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen()
    daemon = FakeDaemon(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, daemon.serve, [trio.SocketListener(listener)])
        yield daemon
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def fake_session(
    tmp_path: Path, call_timeout: float = DEFAULT_CALL_TIMEOUT
) -> AsyncIterator[tuple[FakeDaemon, MeshClient, FakeConnection]]:
    """A FakeDaemon in `tmp_path`, a MeshClient of it and the client's first connection to
    it, for the block."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path, call_timeout=call_timeout) as client,
    ):
        yield daemon, client, await daemon.next_session()
