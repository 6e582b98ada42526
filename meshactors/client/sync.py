"""Blocking clients: `SyncClient`, one plain socket for the CLI, and `SyncMeshClient`, a
`MeshClient` on its own trio thread for scripts (reconnects, typed ops and all)."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from meshactors.client._conn import ConnectRetry, connect_at_once, connect_failure
from meshactors.client._frames import FrameDecoder, answer_data, encode_request, is_event
from meshactors.client.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    DaemonBusy,
    DaemonNotRunning,
    DeadlineExceeded,
    SocketPathTooLong,
)
from meshactors.client.mesh import DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, MeshClient
from meshactors.client.networks import NetworkSync

# seconds SyncClient retries a daemon whose listen queue is full (it retries nothing else)
SYNC_CONNECT_TIMEOUT = 5.0
RECEIVE_CHUNK = 64 * 1024  # bytes asked of the socket per read

__all__ = [
    "ClientError",
    "ConnectFailed",
    "DaemonBusy",
    "DaemonNotRunning",
    "SyncClient",
    "SyncMeshClient",
]

T = TypeVar("T")


@attrs.define
class SyncClient:
    """One connection; `call` waits for its answer, events that arrive meanwhile are kept."""

    sock: socket.socket
    timeout: float = DEFAULT_CALL_TIMEOUT
    _decoder: FrameDecoder = attrs.field(factory=FrameDecoder)
    _frames: deque[dict[str, Any]] = attrs.field(factory=deque)
    _events: deque[dict[str, Any]] = attrs.field(factory=deque)
    _next_id: int = 1

    @classmethod
    def connect(
        cls,
        path: Path,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        connect_timeout: float = SYNC_CONNECT_TIMEOUT,
    ) -> SyncClient:
        """Connect to the daemon's socket, or raise DaemonNotRunning at once when nothing
        listens there (ConnectFailed when the path cannot be connected to: permission denied,
        ...); a daemon whose listen queue is full (running, but too busy to take the
        connection) is retried with the connect backoff for `connect_timeout` seconds, then
        DaemonBusy."""
        SocketPathTooLong.check(path)
        retry = ConnectRetry.within(connect_timeout, time.monotonic)
        while True:
            try:
                sock = connect_at_once(path)
            except OSError as exc:
                failure = connect_failure(path, exc)
                if not isinstance(failure, DaemonBusy):
                    raise failure from None
                time.sleep(retry.pause(failure))
            else:
                sock.settimeout(timeout)
                return cls(sock, timeout)

    def call(self, op: str, **params: Any) -> Any:
        """Run one op and return its `data`; raises ClientError on an error answer."""
        request_id = self._next_id
        self._next_id += 1
        try:
            self.sock.sendall(encode_request(request_id, op, params))
            while True:
                frame = self._read_frame()
                if is_event(frame):
                    self._events.append(frame)
                elif frame.get("id") == request_id:
                    return answer_data(frame)
        except TimeoutError:
            raise DeadlineExceeded(op, self.timeout) from None
        except OSError as exc:  # reset or broken pipe: the daemon went away mid-call
            raise ConnectionLost(
                f"the daemon closed the connection: {exc.strerror or exc}"
            ) from None

    def events(self) -> Iterator[dict[str, Any]]:
        """Event frames, in order, forever (after `events_subscribe`)."""
        self.sock.settimeout(None)
        while True:
            while self._events:
                yield self._events.popleft()
            frame = self._read_frame()
            if is_event(frame):
                yield frame

    def _read_frame(self) -> dict[str, Any]:
        while not self._frames:
            chunk = self.sock.recv(RECEIVE_CHUNK)
            if not chunk:
                raise ConnectionLost()
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.popleft()

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncMeshClient:
    """A MeshClient for blocking code: it runs on a trio thread of its own; `run` reaches any
    of its methods, and the common ones have blocking twins here, taking the same arguments."""

    def __init__(
        self,
        socket: Path | str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        events_since: int | None = None,
    ) -> None:
        self.client = MeshClient(
            socket,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            events_since=events_since,
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="meshactors-client", daemon=True)

    def start(self) -> SyncMeshClient:
        """Start the trio thread and connect; raises what MeshClient.start raises."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with self.client:
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    @contextlib.contextmanager
    def _on_thread(self) -> Iterator[trio.lowlevel.TrioToken]:
        """The client thread's token while it runs; ClientClosed once it stopped (the client
        was closed), also when it stops meanwhile."""
        if self._token is None or not self._thread.is_alive():
            raise ClientClosed()
        try:
            yield self._token
        except trio.RunFinishedError:
            raise ClientClosed() from None

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` (e.g. `client.peers_list`) on the client's thread and wait for it."""
        with self._on_thread() as token:
            return trio.from_thread.run(fn, *args, trio_token=token)

    def call(
        self, op: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run any op with its params and return its data (see MeshClient.call)."""
        return self.run(functools.partial(self.client.call, op, params, timeout=timeout))

    def ensure_networks(
        self, desired: Iterable[Mapping[str, Any]], *, purge_removed: bool = False
    ) -> NetworkSync:
        """Converge the daemon's joined networks to `desired` (see MeshClient.ensure_networks)."""
        return self.run(
            functools.partial(
                self.client.ensure_networks, list(desired), purge_removed=purge_removed
            )
        )

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event from now on, blocking between them, until the client closes (after it,
        ClientClosed)."""
        with self._on_thread() as token:
            stream = trio.from_thread.run_sync(self.client.events, trio_token=token)
        try:
            while True:
                try:
                    yield self.run(stream.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(ClientClosed), self._on_thread() as token:
                trio.from_thread.run_sync(stream.close, trio_token=token)

    def close(self) -> None:
        """Disconnect and stop the thread (nothing to do for a client never started)."""
        if self._thread.ident is None:  # never started: a join would raise
            return
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()

    def __enter__(self) -> SyncMeshClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
