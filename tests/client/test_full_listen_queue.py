"""A daemon whose listen queue is full (connections it has not accepted yet, up to its
LISTEN_BACKLOG) is retried like one still starting, within the connect's timeout, and past it
the client raises `unavailable` (DaemonBusy): the async client's connects and the blocking
SyncClient's (the CLI's) alike. A Unix socket's connect finds that at once (EAGAIN), never
waiting: trio's own connect took it for a connect under way and handed back a socket that
was never connected, and SyncClient took it for no daemon running."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from meshactors.client import ClientError, DaemonBusy, MeshClient, SyncClient, sync
from meshactors.client._conn import ConnectRetry, connect_unix

FULL_TIMEOUT = 3.0  # seconds (of the mock clock) a connect waits for room that never comes
ROOM_WAIT = 30.0  # seconds a connect may take to get in once there is room
MOST_QUEUED = 64  # connections a queue of one may take before the test gives up filling it
GREETING = b"ping"  # what the connect that got in sends through
SYNC_FULL_TIMEOUT = 0.3  # seconds (real) a blocking connect waits for room that never comes


@attrs.define(eq=False)
class FullQueue:
    """A Unix socket listening at `path` that accepts nothing on its own, its queue filled
    with connections (each a real socket, never accepted): the next connect finds no room."""

    listener: socket.socket
    queued: list[socket.socket] = attrs.field(factory=list)

    def make_room(self) -> None:
        """Accept one connection queued, making room for one more."""
        self.queued.append(self.listener.accept()[0])

    def accept_last(self) -> socket.socket:
        """Accept every connection queued; the one that came last."""
        while True:
            self.listener.setblocking(False)
            try:
                accepted = self.listener.accept()[0]
            except BlockingIOError:
                return self.queued[-1]
            accepted.setblocking(True)
            self.queued.append(accepted)


@contextmanager
def full_queue(path: Path) -> Iterator[FullQueue]:
    """A FullQueue at `path` for the block."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        full = FullQueue(listener)
        try:
            while len(full.queued) < MOST_QUEUED:
                waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                waiting.setblocking(False)
                try:
                    waiting.connect(str(path))
                except BlockingIOError as no_room:
                    waiting.close()
                    assert no_room.errno == errno.EAGAIN  # at once: no connect left waiting
                    break
                full.queued.append(waiting)
            else:
                pytest.fail(f"the queue took {MOST_QUEUED} connections")
            yield full
        finally:
            for queued in full.queued:
                queued.close()


async def test_a_connect_to_a_full_queue_raises_unavailable_past_its_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "full.sock"
    with full_queue(path):
        started = trio.current_time()
        with trio.fail_after(FULL_TIMEOUT * 2), pytest.raises(ClientError) as refused:
            await connect_unix(path, ConnectRetry.within(FULL_TIMEOUT))
        waited = trio.current_time() - started
    assert refused.value.code == "unavailable"
    assert "listen queue is full" in refused.value.message
    assert waited >= FULL_TIMEOUT


async def test_a_client_whose_daemon_queue_stays_full_raises_unavailable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "full.sock"
    with full_queue(path), trio.fail_after(FULL_TIMEOUT * 2), pytest.raises(ClientError) as refused:
        async with MeshClient(path, connect_timeout=FULL_TIMEOUT):
            pass
    assert refused.value.code == "unavailable"


async def test_a_connect_to_a_full_queue_gets_in_once_there_is_room(tmp_path: Path) -> None:
    path = tmp_path / "full.sock"
    connected: list[trio.SocketStream] = []

    async def connect() -> None:
        connected.append(await connect_unix(path, ConnectRetry.within(ROOM_WAIT)))

    with full_queue(path) as full, trio.fail_after(ROOM_WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect)
            await trio.testing.wait_all_tasks_blocked()  # found no room, waiting to retry
            full.make_room()
        (stream,) = connected
        async with stream:
            await stream.send_all(GREETING)
            assert full.accept_last().recv(len(GREETING)) == GREETING


def test_a_sync_connect_to_a_full_queue_raises_daemon_busy_past_its_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "full.sock"
    with full_queue(path):
        started = time.monotonic()
        with pytest.raises(DaemonBusy) as refused:
            SyncClient.connect(path, connect_timeout=SYNC_FULL_TIMEOUT)
        waited = time.monotonic() - started
    assert refused.value.code == "unavailable"
    assert "listen queue is full" in refused.value.message
    assert waited >= SYNC_FULL_TIMEOUT  # retried for its whole timeout, not refused at once


def test_a_sync_connect_to_a_full_queue_gets_in_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "full.sock"
    refused = threading.Event()
    connect_at_once = sync.connect_at_once

    def tried(at: Path) -> socket.socket:
        try:
            return connect_at_once(at)
        except BlockingIOError:
            refused.set()
            raise

    monkeypatch.setattr(sync, "connect_at_once", tried)
    connected: list[SyncClient] = []

    def connect() -> None:
        connected.append(SyncClient.connect(path, connect_timeout=ROOM_WAIT))

    with full_queue(path) as full:
        connecting = threading.Thread(target=connect)
        connecting.start()
        assert refused.wait(ROOM_WAIT)  # found no room, retrying
        full.make_room()
        connecting.join(ROOM_WAIT)
        (client,) = connected
        with client:
            client.sock.sendall(GREETING)
            assert full.accept_last().recv(len(GREETING)) == GREETING
