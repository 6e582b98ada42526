"""One connection to the daemon: numbered requests answered by id under per-call deadlines,
and the event frames it receives, through a bounded buffer that never stalls the answers."""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.actors import Broadcast, Subscriber, take_queued
from meshactors.client._frames import (
    FrameDecoder,
    answer_data,
    encode_request,
    events_told,
    is_event,
)
from meshactors.client.errors import (
    ClientError,
    ConnectFailed,
    ConnectionLost,
    DaemonBusy,
    DaemonNotRunning,
    DeadlineExceeded,
    ProtocolError,
    SocketPathTooLong,
)
from meshactors.exception_groups import first_leaf
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS, MAX_CONCURRENT_SETTLING, SETTLING_OPS

CONNECT_RETRY_FIRST = 0.05  # seconds before the second connect attempt; doubles each time
CONNECT_RETRY_MAX = 1.0  # seconds between connect attempts at most
# request lines queued for the writer task: never full, as each one holds a slot till answered
OUTGOING_CAPACITY = MAX_CONCURRENT_REQUESTS + MAX_CONCURRENT_SETTLING
CALL_CANCEL_TIMEOUT = 10.0  # seconds the cancel of a call given up waits for its answer
EVENT_BUFFER = 4096  # event frames received but not yet routed before the newest are dropped
RECEIVE_CHUNK = 64 * 1024  # bytes asked of the socket per read
RETRYABLE_ERRNOS = (errno.ENOENT, errno.ECONNREFUSED)  # no socket yet, or no one listening
# why a connect found no room: the daemon's listen queue (LISTEN_BACKLOG) holds connections
# it has not accepted yet, up to its bound, and a Unix socket's connect then fails EAGAIN
QUEUE_FULL = "its listen queue is full"

Event = dict[str, Any]
# the marker a connection routes among its event frames, for the client's stream table only:
# the call a given-up `rpc_call_stream` opened is being cancelled (its late events are dropped
# until its end or its deadline, never held as those of a stream being opened)
STREAM_LEFT = "client_stream_left"


@attrs.define
class ConnectRetry:
    """The connect retry policy: tries spaced by a delay doubling from CONNECT_RETRY_FIRST to
    CONNECT_RETRY_MAX, until `deadline` (on `clock`: trio's, or the blocking SyncClient's
    monotonic one). One is shared by every try of a connect, also those its caller makes
    again after a refusal (see `binary.switch`)."""

    deadline: float
    clock: Callable[[], float] = trio.current_time
    _delay: float = CONNECT_RETRY_FIRST

    @classmethod
    def within(cls, timeout: float, clock: Callable[[], float] = trio.current_time) -> ConnectRetry:
        """Tries for `timeout` seconds from now on `clock`."""
        return cls(clock() + timeout, clock)

    def pause(self, failure: ClientError) -> float:
        """The seconds to wait before the next try; raise `failure` (the last try's) once the
        deadline passed."""
        remaining = self.deadline - self.clock()
        if remaining <= 0:
            raise failure
        pause = min(self._delay, remaining)
        self._delay = min(self._delay * 2, CONNECT_RETRY_MAX)
        return pause

    async def wait(self, failure: ClientError) -> None:
        """Wait (under trio) before the next try, as `pause` says."""
        await trio.sleep(self.pause(failure))


async def connect_unix(path: Path, retry: ConnectRetry, first: bytes = b"") -> trio.SocketStream:
    """Connect to the daemon's socket and send it `first` (the connection's first request, if
    any), retrying as `retry` says while the socket is absent or refuses (the daemon may be
    starting), its listen queue is full (a daemon too busy to accept), or the daemon closed
    the connection before one byte of `first` was written (nothing of it reached the daemon);
    then DaemonNotRunning, DaemonBusy for a queue full, or ConnectionLost for connections
    closed so (at once, SocketPathTooLong, for a path no socket can have). Once a byte went
    out nothing is retried: a failure is ConnectionLost, as the daemon may have read the
    request and run it."""
    SocketPathTooLong.check(path)
    while True:
        try:
            stream = await open_unix(path)
        except OSError as exc:
            failure: ClientError = connect_failure(path, exc)
            if isinstance(failure, ConnectFailed):
                raise failure from None
        else:
            unsent = await _send_first(stream, first)
            if unsent is None:
                return stream
            failure = unsent
        await retry.wait(failure)


async def open_unix(path: Path) -> trio.SocketStream:
    """`connect_at_once` under trio: a full listen queue raises EAGAIN (trio's
    `open_unix_socket` takes that for a connect under way, and hands back a socket never
    connected), any other failure its OSError."""
    await trio.lowlevel.checkpoint()
    return trio.SocketStream(trio.socket.from_stdlib_socket(connect_at_once(path)))


def connect_at_once(path: Path) -> socket.socket:
    """A socket connected to the Unix socket at `path` (non-blocking), never waiting: a full
    listen queue raises EAGAIN (see `connect_failure`), any other failure its OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def connect_failure(path: Path, exc: OSError) -> DaemonBusy | DaemonNotRunning | ConnectFailed:
    """What a connect's failure `exc` at `path` means, for both clients alike: DaemonBusy for
    a daemon with no room in its listen queue (EAGAIN); DaemonNotRunning for no socket or no
    one listening (RETRYABLE_ERRNOS); ConnectFailed for any other (EACCES, ENOTDIR, ...)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EAGAIN:
        return DaemonBusy(path, QUEUE_FULL)
    if exc.errno in RETRYABLE_ERRNOS:
        return DaemonNotRunning(path, reason)
    return ConnectFailed(path, reason)


async def _send_first(stream: trio.SocketStream, first: bytes) -> ConnectionLost | None:
    """Send `first` on a new connection: None once all of it went out; the error to retry on
    when not one byte could be written (the daemon had closed the connection), the stream
    closed. A failure past the first byte closes it and raises ConnectionLost."""
    if not first:
        return None
    async with closed_on_failure(stream):
        try:
            sent = await stream.socket.send(first)  # writes some bytes, or raises having none
        except OSError as exc:
            await trio.aclose_forcefully(stream)
            reason = exc.strerror or str(exc)
            return ConnectionLost(f"the daemon closed the connection before a request ({reason})")
        if sent < len(first):
            await stream.send_all(first[sent:])
    return None


@asynccontextmanager
async def closed_on_failure(stream: trio.SocketStream) -> AsyncIterator[None]:
    """Close `stream` when the block fails, however; a broken stream fails ConnectionLost."""
    try:
        yield
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectionLost(f"the connection failed: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@attrs.define(eq=False)
class _Pending:
    """A request waiting for its answer frame (or for the connection to fail); it holds its
    slot until then, whether its caller still waits or not, as the daemon counts it till then."""

    request_id: int
    op: str
    slot: trio.Semaphore
    done: trio.Event = attrs.field(factory=trio.Event)
    frame: dict[str, Any] | None = None
    error: ClientError | None = None

    def settle(self) -> None:
        """The answer (or the connection's failure) is in: wake the caller, free the slot."""
        self.done.set()
        self.slot.release()


@attrs.define(eq=False)
class Connection:
    """A live connection; `call` runs an op, `events` yields event frames and Lagged markers."""

    stream: trio.abc.Stream
    closed: trio.Event = attrs.field(factory=trio.Event)
    close_reason: ClientError | None = None
    _pending: dict[int, _Pending] = attrs.field(factory=dict)
    _ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    _slots: trio.Semaphore = attrs.field(factory=lambda: trio.Semaphore(MAX_CONCURRENT_REQUESTS))
    _settling_slots: trio.Semaphore = attrs.field(
        factory=lambda: trio.Semaphore(MAX_CONCURRENT_SETTLING)
    )
    _fanout: Broadcast[Event] = attrs.field(factory=Broadcast)
    events: Subscriber[Event] = attrs.field(init=False)
    _out_send: trio.MemorySendChannel[bytes] = attrs.field(init=False)
    _out_receive: trio.MemoryReceiveChannel[bytes] = attrs.field(init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.events = self._fanout.subscribe(EVENT_BUFFER, weight=events_told)
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](OUTGOING_CAPACITY)

    async def call(self, op: str, params: dict[str, Any], timeout: float) -> Any:
        """Run one op and return its `data`; ClientError on an error answer, a lost connection
        or no answer within `timeout` seconds. A caller that gives up (cancelled, or the
        deadline) leaves the request its slot until the daemon answers it, and has the daemon
        cancel an `rpc_call` or the call an `rpc_call_stream` opens."""
        # answers to served calls never wait behind our own calls: they have slots of their own
        slots = self._settling_slots if op in SETTLING_OPS else self._slots
        pending = None
        with trio.move_on_after(timeout):
            await slots.acquire()  # waiting for a slot is part of the call's deadline
            pending = self._request(op, params, slots)
            try:
                await pending.done.wait()
            finally:
                if not pending.done.is_set():
                    self._give_up(pending, params)
        if pending is None or not pending.done.is_set():
            raise DeadlineExceeded(op, timeout)
        if pending.frame is not None:
            return answer_data(pending.frame)
        assert pending.error is not None  # settled without an answer: the connection failed
        raise pending.error

    def _request(self, op: str, params: dict[str, Any], slot: trio.Semaphore) -> _Pending:
        """Queue one request line, holding the `slot` taken for it until it is answered."""
        try:
            self._check_open()
            request_id = next(self._ids)
            line = encode_request(request_id, op, params)
        except BaseException:
            slot.release()
            raise
        pending = self._pending[request_id] = _Pending(request_id, op, slot)
        self._out_send.send_nowait(line)  # never full: see OUTGOING_CAPACITY
        return pending

    def _give_up(self, pending: _Pending, params: dict[str, Any]) -> None:
        """Its caller stopped waiting: the answer, when it comes, only frees the slot; an
        `rpc_call` is cancelled at the daemon at once, an `rpc_call_stream` once its answer
        names the call it opened (either way the serving side is told). A connection that is
        ending needs neither: the daemon cancels a gone connection's calls itself."""
        if self._nursery is None:
            return
        if pending.op == "rpc_call":
            self._nursery.start_soon(self._cancel_call, pending.request_id)
        elif pending.op == "rpc_call_stream":
            self._nursery.start_soon(self._cancel_stream, pending, params.get("timeout_ms"))

    async def _cancel_call(self, request_id: int) -> None:
        """Cancel our own `rpc_call` request by its id; one answered meanwhile (or a lost
        connection) leaves nothing to cancel."""
        with contextlib.suppress(ClientError):
            await self.call("rpc_cancel", {"call": request_id}, CALL_CANCEL_TIMEOUT)

    async def _cancel_stream(self, pending: _Pending, timeout_ms: int | None) -> None:
        """Cancel the streamed call a given-up `rpc_call_stream` (asked with `timeout_ms`)
        opened, by the request id its answer carries: nobody reads its chunks, so it would run
        on until its timeout. Its events are dropped until its end, which the daemon sends
        after a cancel answered ok, or until its deadline (a cancel that failed: it had ended,
        or a core restart may have lost the call, end and all; or no answer)."""
        await pending.done.wait()
        if pending.frame is None:  # the connection failed: the daemon ends its calls itself
            return
        try:
            request_id = answer_data(pending.frame)["request_id"]
        except ClientError:  # an error answer opened no call
            return
        marker = {"kind": STREAM_LEFT, "request_id": request_id, "timeout_ms": timeout_ms}
        self._fanout.publish(marker)  # after the events that came before its answer
        with contextlib.suppress(ClientError):
            await self.call("rpc_cancel", {"request_id": request_id}, CALL_CANCEL_TIMEOUT)

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise self.close_reason or ConnectionLost()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and write until the daemon hangs up or the caller cancels."""
        try:
            async with trio.open_nursery() as nursery:
                # it takes give-ups only while its body runs: once the body ends it closes
                # with its tasks, and the connection ends, which cancels its calls itself
                self._nursery = nursery
                try:
                    nursery.start_soon(self._write)
                    task_status.started()
                    await self._read()
                    nursery.cancel_scope.cancel()
                finally:
                    self._nursery = None
        except* ClientError as group:
            self.close(first_leaf(group))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            self.close(ConnectionLost(f"the connection failed: {first_leaf(group)}"))
        finally:
            self.close(ConnectionLost())

    async def _read(self) -> None:
        decoder = FrameDecoder()
        while chunk := await self.stream.receive_some(RECEIVE_CHUNK):
            for frame in decoder.feed(chunk):
                self._dispatch(frame)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if is_event(frame):
            self._fanout.publish(frame)
            return
        request_id = frame.get("id")
        if request_id is None:  # about the connection itself (e.g. `unavailable`): it ends
            answer_data(frame)
            raise ProtocolError(f"an answer without an id: {frame!r}")
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is not None:  # its caller may have given up: then this only frees its slot
            pending.frame = frame
            pending.settle()

    async def _write(self) -> None:
        """The connection's one writer: each write carries every request line queued for it."""
        async for line in self._out_receive:
            lines = [line, *take_queued(self._out_receive, OUTGOING_CAPACITY - 1)]
            await self.stream.send_all(b"".join(lines))

    def close(self, reason: ClientError) -> None:
        """End the connection: the calls in flight fail with `reason`."""
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for pending in self._pending.values():
            pending.error = reason
            pending.settle()
        self._pending.clear()
        self._fanout.close()


@asynccontextmanager
async def open_connection(path: Path, connect_timeout: float) -> AsyncIterator[Connection]:
    """Connect (retrying up to `connect_timeout`) and serve the connection for the block."""
    stream = await connect_unix(path, ConnectRetry.within(connect_timeout))
    async with stream:
        connection = Connection(stream)
        async with trio.open_nursery() as nursery:
            await nursery.start(connection.run)
            try:
                yield connection
            finally:
                nursery.cancel_scope.cancel()
