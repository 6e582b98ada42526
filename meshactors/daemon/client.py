"""The `client c<n>` actor: one control-socket connection, its requests, answers and events.

It reads request lines, runs each op in its own task (up to a cap) except channel sends,
which one in-order task runs as they come (consecutive ones merged: see daemon/optable.py),
writes each answer or event from the task that made it when nothing is queued or being written
(one scheduler pass fewer; a pushed event is written without yielding at all when the socket
takes it, and a received frame's channel messages in one write), else through one bounded
outgoing queue that keeps the order, and
on disconnect runs the session's cleanups (method claims, subscriptions), so a vanished
program leaves nothing behind.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar

import attrs
import structlog
import trio

from meshactors.actors import Actor, Broadcast, Lagged, Pending, Subscriber, cleanup_scope
from meshactors.daemon.event_stream import (
    LAG_DISCONNECT_LIMIT,
    SlowConsumer,
    cut_off_when_overflowed,
    follow,
    report_lag,
    wire_event,
)
from meshactors.daemon.http import HttpConnection, looks_like_http
from meshactors.daemon.lines import RECEIVE_CHUNK, LineReader, Oversized
from meshactors.daemon.optable import Outcome, as_op_error, finish
from meshactors.daemon.services import Services
from meshactors.daemon.session import Push, Session
from meshactors.daemon.tcp_auth import TcpAuth
from meshactors.socket_io import plain_socket, write_nowait
from meshactors.store.events import Event
from meshactors.wire.ipc import (
    MAX_FRAME_BYTES,
    BadFrame,
    ErrorCode,
    OpError,
    Request,
    RequestId,
    encode,
    error_frame,
    event_frame,
    ok_frame,
    parse_request,
)

log = structlog.get_logger("meshactors.client")

MAX_CONCURRENT_REQUESTS = 128  # requests one connection may have in flight (each line ≤ 1 MiB)
OUTGOING_CAPACITY = 256  # frames queued for the socket writer
PUSH_CAPACITY = 4096  # events addressed to this connection, queued before it lags
WRITE_BATCH = 256  # frames joined into one socket write
PUSH_BATCH = 64  # queued events joined into one outgoing frame (a frame's worth)
PUSH_BATCH_BYTES = 64 * 1024  # ... and their bytes: the joining stops once past this


@attrs.define(eq=False)
class ClientActor(Actor):
    """Serves one connection until it closes; its teardown releases what it held."""

    kind: ClassVar[str] = "client"

    client_id: str
    stream: trio.abc.HalfCloseableStream
    services: Services
    prefix: bytes = b""  # bytes already read while telling HTTP from JSON lines
    tcp: TcpAuth | None = None  # a TCP connection: HTTP only, every request authenticated
    protocol: str = "unknown"  # "json-lines" or "http" once the first bytes tell
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    _out_send: trio.MemorySendChannel[bytes] = attrs.field(init=False)
    _out_receive: trio.MemoryReceiveChannel[bytes] = attrs.field(init=False)
    _in_order_send: trio.MemorySendChannel[Request] = attrs.field(init=False)
    _in_order_receive: trio.MemoryReceiveChannel[Request] = attrs.field(init=False)
    _session: Session | None = attrs.field(default=None, init=False)
    _unwritten: int = attrs.field(default=0, init=False)  # frames queued and not yet written
    _writing: bool = attrs.field(default=False, init=False)
    _pushes_idle: bool = attrs.field(default=False, init=False)  # their forwarder has none
    _answering: bool = attrs.field(default=False, init=False)  # settled requests may be answered
    _socket: trio.socket.SocketType | None = attrs.field(default=None, init=False)  # if plain
    _written: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    def __attrs_post_init__(self) -> None:
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](OUTGOING_CAPACITY)
        # never full: every request queued here counts against MAX_CONCURRENT_REQUESTS
        self._in_order_send, self._in_order_receive = trio.open_memory_channel[Request](
            MAX_CONCURRENT_REQUESTS
        )
        self._socket = plain_socket(self.stream)

    def figures(self) -> dict[str, Any]:
        session = self._session
        return {
            "protocol": self.protocol,
            "requests": self.requests,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "events": session.events_subscribed if session else False,
            "outgoing": self._out_receive.statistics().current_buffer_used,
            "pushes_queued": session.pushes.queued if session else 0,
            "lagged": session.pushes.skipped_total if session else 0,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pushes = Broadcast[Push]().subscribe(PUSH_CAPACITY, LAG_DISCONNECT_LIMIT)
        try:
            async with trio.open_nursery() as nursery:
                self._session = Session(
                    self.client_id,
                    self.services,
                    pushes,
                    self._offer_push,
                    self._offer_lines,
                    nursery,
                    self,
                )
                task_status.started()
                if self.tcp is not None or await self._speaks_http():
                    self.protocol = "http"
                    self._session.receives_pushes = False
                    await HttpConnection(
                        self.stream, self._session, self, self._write, self.tcp, self.prefix
                    ).serve()
                else:
                    self.protocol = "json-lines"
                    self._answering = True
                    nursery.start_soon(self._write_frames)
                    nursery.start_soon(self._run_in_order)
                    nursery.start_soon(self._forward_pushes, pushes)
                    nursery.start_soon(cut_off_when_overflowed, pushes)
                    await self._read_requests(nursery)
                nursery.cancel_scope.cancel()
        except* SlowConsumer:
            log.warning("client cut off: it stopped reading", client=self.client_id)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("client hung up mid-write", client=self.client_id)
        finally:
            self._answering = False
            with cleanup_scope():
                if self._session is not None:
                    for cleanup in self._session.take_cleanups():
                        try:
                            await cleanup()
                        except Exception:
                            log.exception("cleanup failed", client=self.client_id)
                await self.stream.aclose()

    async def _speaks_http(self) -> bool:
        """Read just enough of the connection's first bytes to tell HTTP from JSON lines."""
        while (verdict := looks_like_http(self.prefix)) is None:
            chunk = await self.stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                return False  # the JSON-lines reader sees the same end of stream
            self.prefix += chunk
        return verdict

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        reader = LineReader(self.stream, MAX_FRAME_BYTES)
        reader.feed_prefix(self.prefix)
        while (line := await reader.next_line()) is not None:
            if isinstance(line, Oversized):
                self.errors += 1
                await self._emit(
                    error_frame(
                        None,
                        OpError(
                            ErrorCode.FRAME_TOO_LARGE,
                            f"frame of {line.length} bytes exceeds {MAX_FRAME_BYTES}",
                        ),
                    )
                )
                continue
            try:
                request = parse_request(line)
            except BadFrame as bad:
                self.errors += 1
                await self._emit(error_frame(bad.request_id, bad))
                continue
            if self.in_flight >= MAX_CONCURRENT_REQUESTS:
                self.errors += 1
                await self._emit(
                    error_frame(
                        request.id,
                        OpError(
                            ErrorCode.TOO_MANY_REQUESTS,
                            f"at most {MAX_CONCURRENT_REQUESTS} requests in flight per connection",
                        ),
                    )
                )
                continue
            self.in_flight += 1
            if self.services.ops.in_order(request):
                self._in_order_send.send_nowait(request)
                continue
            assert self._session is not None
            try:
                work = self.services.ops.begin(self._session, request)
            except OpError as error:
                await self._answer(request, error)
                continue
            if isinstance(work, Pending):  # answered by the task that settles it: none waits
                work.on_settled(functools.partial(self._settled, request))
            else:
                nursery.start_soon(self._answer, request, work)

    def _settled(self, request: Request, outcome: Any) -> None:
        """Answer a request whose Pending settled, from the task that settled it."""
        self.requests += 1
        self.in_flight -= 1
        if not self._answering:
            return  # the connection is closing: nobody reads answers now
        if isinstance(outcome, Exception):
            self.errors += 1
            assert self._session is not None
            frame = error_frame(request.id, as_op_error(self._session, request.op, outcome))
        elif request.id is None:
            return  # a notification that succeeded: no answer
        else:
            frame = ok_frame(request.id, outcome)
        self._emit_nowait(frame)

    async def _answer(self, request: Request, work: Awaitable[Any] | OpError) -> None:
        """Answer `request` with the outcome of its begun `work` (or the error it began with)."""
        assert self._session is not None
        self.requests += 1
        try:
            if isinstance(work, OpError):
                raise work
            data = await finish(self._session, request, work)
        except OpError as error:
            self.errors += 1
            frame = error_frame(request.id, error)
        else:
            if request.id is None:
                return  # a notification that succeeded: no answer
            frame = ok_frame(request.id, data)
        finally:
            self.in_flight -= 1
        await self._emit(frame)

    async def _run_in_order(self) -> None:
        """Run in-order requests as they come: all those queued at once go to the op table
        together, so consecutive channel sends run as one."""
        assert self._session is not None
        async for first in self._in_order_receive:
            queued = [first]
            while len(queued) < MAX_CONCURRENT_REQUESTS:
                try:
                    queued.append(self._in_order_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self.services.ops.run_in_order(self._session, queued, self._answer_all)

    async def _answer_all(self, requests: Sequence[Request], outcome: Outcome) -> None:
        """Answer requests that share one outcome, in order, in one outgoing frame."""
        self.requests += len(requests)
        self.in_flight -= len(requests)
        if isinstance(outcome, OpError):
            self.errors += len(requests)
            await self._emit(b"".join(error_frame(r.id, outcome) for r in requests))
            return
        answered = [request.id for request in requests if request.id is not None]
        if answered:  # notifications that succeeded get no answer
            after_id = ok_frame(None, outcome)[len(_NULL_ID) :]
            await self._emit(b"".join(_id_head(request_id) + after_id for request_id in answered))

    async def forward_broadcast(self, events: Subscriber[Event], after: int) -> None:
        """Write broadcast events newer than `after` to this connection as they come."""
        await follow(events, after, self)

    async def send_event(self, event: Event) -> None:
        """Write one logged event (used for replay)."""
        await self._emit(event_frame(event.kind, wire_event(event)))

    async def send_frame(self, kind: str, data: dict[str, Any]) -> None:
        """Write one event frame that is not logged (e.g. a replay gap notice)."""
        await self._emit(event_frame(kind, data))

    def _offer_push(self, item: Push) -> bool:
        """Write a pushed event now if nothing is waiting before it, else queue it for
        `_forward_pushes`; False (counted as skipped) when the queue is full."""
        assert self._session is not None
        if self._may_write_push():
            try:
                item = _encoded(item)
            except (TypeError, ValueError):  # not JSON: the forwarder meets it, not the pusher
                return self._session.pushes.offer(item)
            if self._write_push(item):
                return True
        return self._session.pushes.offer(item)

    def _offer_lines(self, lines: list[bytes]) -> int:
        """Push encoded event lines, in order: written in one go if nothing is waiting before
        them (one write for a received frame's worth of channel messages, not one each), else
        queued one by one; returns how many were taken (see `_offer_push`)."""
        assert self._session is not None
        if lines and self._may_write_push() and self._write_push(b"".join(lines)):
            return len(lines)
        return sum(self._session.pushes.offer(line) for line in lines)

    def _may_write_push(self) -> bool:
        """Whether a push may be written now: its forwarder idles and nothing is queued or being
        written. Either way the forwarder stops idling: what the caller writes or queues now
        goes before any later push."""
        idle, self._pushes_idle = self._pushes_idle, False
        return idle and self._unwritten == 0 and not self._writing

    def _write_push(self, line: bytes) -> bool:
        """Write what `_may_write_push` allowed; once written, the forwarder idles again."""
        if not self._write_now(line):
            return False
        self._pushes_idle = True
        return True

    def _write_now(self, frame: bytes) -> bool:
        """Write `frame` to a plain socket without yielding; what the socket does not take at
        once heads the outgoing queue. False: nothing written (would block, or gone)."""
        sent = None if self._socket is None else write_nowait(self._socket, frame)
        if sent is None:
            return False
        if sent < len(frame):
            self._unwritten += 1
            self._out_send.send_nowait(frame[sent:])  # the queue was empty: never full
        return True

    async def _forward_pushes(self, pushes: Subscriber[Push]) -> None:
        """Write pushed events, those queued together (up to PUSH_BATCH, PUSH_BATCH_BYTES) in
        one outgoing frame: one queue pass for a received frame's worth of events."""
        try:
            await self._forward_each(pushes)
        finally:
            self._pushes_idle = False  # nobody forwards now: pushes must queue (and go unread)

    async def _forward_each(self, pushes: Subscriber[Push]) -> None:
        """The forwarding loop: idle (so pushes are written at once) while nothing is queued."""
        while True:
            self._pushes_idle = pushes.drained
            try:
                item = await pushes.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            self._pushes_idle = False
            if isinstance(item, Lagged):
                await report_lag(item, pushes, self)
                continue
            frames = [_encoded(item)]
            size = len(frames[0])
            for _ in range(min(pushes.queued, PUSH_BATCH - 1)):
                if size >= PUSH_BATCH_BYTES:
                    break
                event = await pushes.receive()  # queued: answers at once, never a marker
                assert not isinstance(event, Lagged)
                frames.append(_encoded(event))
                size += len(frames[-1])
            await self._emit(b"".join(frames))

    def _emit_nowait(self, frame: bytes) -> None:
        """`_emit` from code that cannot wait: written now, or queued, or (the queue is full)
        handed to a task."""
        if self._unwritten == 0 and not self._writing and self._write_now(frame):
            return
        try:
            self._out_send.send_nowait(frame)
        except trio.WouldBlock:
            assert self._session is not None
            self._session.nursery.start_soon(self._emit, frame)
        else:
            self._unwritten += 1

    async def _emit(self, frame: bytes) -> None:
        """Write `frame` now from this task when nothing is queued or being written (without a
        yield when the socket takes it at once); else queue it for the writer, keeping the
        order."""
        if self._unwritten == 0 and not self._writing:
            if not self._write_now(frame):
                await self._write(frame)
            return
        self._unwritten += 1
        await self._out_send.send(frame)

    async def _write_frames(self) -> None:
        while True:
            batch = [await self._out_receive.receive()]
            while self._writing:
                await self._written.park()
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._out_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._write(b"".join(batch))
            self._unwritten -= len(batch)

    async def _write(self, data: bytes) -> None:
        """The one place bytes reach the socket; other writers wait (the writer task parks)."""
        self._writing = True
        try:
            await self.stream.send_all(data)
        except trio.Cancelled:
            await trio.aclose_forcefully(self.stream)  # a frame may be cut: nothing may follow it
            raise
        finally:
            self._writing = False
            self._written.unpark_all()


_NULL_ID = b'{"id":null'  # how every answer frame begins when its id is None


def _encoded(push: Push) -> bytes:
    """A pushed event as a line: encoded already, or an event dict, `kind` first (the dict is
    left as it was)."""
    return push if isinstance(push, bytes) else encode(push)


def _id_head(request_id: RequestId) -> bytes:
    """The start of an answer frame with this id, as `ok_frame` writes it."""
    if isinstance(request_id, int):
        return b'{"id":%d' % request_id
    return b'{"id":' + json.dumps(request_id, ensure_ascii=False).encode()
