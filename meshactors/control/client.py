"""The `client c<n>` actor: one control-socket connection, its requests, answers and events.

It reads request lines and runs each op in its own task (up to a cap), except channel sends,
which one in-order task runs as they come (consecutive ones merged: see ops/optable.py); a
claim or subscription's task starts its work once the requests read before it for the same
method or channel ended (`Op.ordered_by`), so they take effect in the order sent.
Every answer and event goes on one bounded outgoing channel (bounded in frames and in bytes:
past MAX_OUTGOING_BYTES no new request starts, and a frame that waits STALL_TIMEOUT for room
cuts the connection off); one writer task drains what is queued into one socket write, so
the socket has one writer and frames keep their order. Events pushed by other actors wait in
the connection's push queue, bounded in events and in bytes (lagging when full), for its
forwarder. When the program closes its sending side, every request read is still run and
answered before the connection closes, within DRAIN_TIMEOUT; a program that closes the whole
connection is gone, and what it still had running is cancelled. On disconnect the session's
cleanups run (method claims, subscriptions), so a vanished program leaves nothing behind.

`stream_open` and `stream_accept` run in the reader's task (no line after them is read); once
one is answered ok, the reader and the writer turn to the stream's pipe: length-prefixed frames
both ways, with core at the other end of the pipe's channels (see network/stream_pipe.py).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
import structlog
import trio

from meshactors.actors import (
    Actor,
    Lagged,
    Subscriber,
    cleanup_scope,
    hand_over,
    take_queued,
)
from meshactors.control.event_stream import (
    LAG_DISCONNECT_LIMIT,
    SlowConsumer,
    cut_off_when_overflowed,
    report_lag,
    wire_event,
)
from meshactors.control.http import HttpConnection, sniff
from meshactors.control.http_parse import REQUEST_TIMEOUT
from meshactors.control.lines import LineReader, Oversized
from meshactors.control.session import CutOff, Push, Session, push_size
from meshactors.control.tcp_auth import TcpGate
from meshactors.daemon.services import Services
from meshactors.network.stream_pipe import STREAM_PIECE_BYTES, Pipe, frame_cost
from meshactors.ops.optable import Each, Outcome, finish
from meshactors.socket_io import HANGUP_CHECK, hung_up, receive_some, send_all, unless_hung_up
from meshactors.store.events import Event
from meshactors.wire import pipe_frames
from meshactors.wire.ipc import (
    MAX_CONCURRENT_REQUESTS,
    MAX_CONCURRENT_SETTLING,
    MAX_FRAME_BYTES,
    SETTLING_OPS,
    BadFrame,
    ErrorCode,
    OpError,
    Request,
    RequestId,
    error_frame,
    event_frame,
    ok_frame,
    parse_request,
)
from meshactors.wire.pipe_frames import End, FrameParser, Item, Reset

log = structlog.get_logger("meshactors.client")

OUTGOING_CAPACITY = 256  # frames queued for the socket writer
MAX_OUTGOING_BYTES = 32 * 1024 * 1024  # ... and their bytes (one larger frame goes alone)
STALL_TIMEOUT = 30.0  # seconds a frame may wait for room there before the connection is cut
PUSH_CAPACITY = 4096  # events addressed to this connection, queued before it lags
MAX_PUSH_BYTES = 16 * 1024 * 1024  # ... and their bytes (one larger event goes alone)
PUSH_END_RESERVE = 256  # ends of calls and claims queued past both bounds; one more: cut off
WRITE_BATCH = 256  # frames joined into one socket write
PUSH_BATCH = 64  # queued events joined into one outgoing frame (a frame's worth)
PUSH_BATCH_BYTES = 64 * 1024  # ... and their bytes: the joining stops once past this
PIPE_RECEIVE = 256 * 1024  # bytes asked of a binary stream's socket per read
PIPE_WRITE_BYTES = 1024 * 1024  # a binary stream's queued frames joined into one write
DRAIN_TIMEOUT = 30.0  # seconds the requests read before a program's end of input may take
RESET_WRITE_TIMEOUT = 5.0  # seconds a binary stream's connection has to write its error frame
FINISHED_STALL_TIMEOUT = 30.0  # seconds the socket of a finished binary stream's program may
# take none of what is left for it: one that stops reading it lets its connection go


@attrs.define(eq=False)
class ClientActor(Actor):
    """Serves one connection until it closes; its teardown releases what it held."""

    kind: ClassVar[str] = "client"

    client_id: str
    stream: trio.abc.HalfCloseableStream
    services: Services
    cut_offs: trio.MemorySendChannel[CutOff]  # control's: where its close reports cleanups cut off
    prefix: bytes = b""  # bytes already read while telling HTTP from JSON lines
    tcp: TcpGate | None = None  # a TCP connection: HTTP only, every request authenticated
    protocol: str = "unknown"  # "json-lines" or "http" once the first bytes tell; "binary-stream"
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    settling: int = 0  # of them, requests that settle a call (SETTLING_OPS)
    _out_send: trio.MemorySendChannel[bytes] = attrs.field(init=False)
    _out_receive: trio.MemoryReceiveChannel[bytes] = attrs.field(init=False)
    _in_order_send: trio.MemorySendChannel[Request] = attrs.field(init=False)
    _in_order_receive: trio.MemoryReceiveChannel[Request] = attrs.field(init=False)
    writes: int = 0  # socket writes made: each carries whatever was queued for it
    outgoing_bytes: int = 0  # bytes of answers and events queued for the writer, not written
    outgoing_bytes_peak: int = 0  # the most they ever were
    unsubscribed_dropped: int = 0  # event lines of channels it left, dropped unwritten
    _progress: trio.Event = attrs.field(factory=trio.Event, init=False)  # a request settled, or
    # a write was done: what `_drain` and frames waiting for room wait for
    _room: trio.Lock = attrs.field(factory=trio.Lock, init=False)  # held by the frame waiting
    # for room in the outgoing bytes: the others queue behind it, in order
    _session: Session | None = attrs.field(default=None, init=False)
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](OUTGOING_CAPACITY)
        # never full: every request queued here counts against MAX_CONCURRENT_REQUESTS
        self._in_order_send, self._in_order_receive = trio.open_memory_channel[Request](
            MAX_CONCURRENT_REQUESTS
        )

    def inbox_statistics(self) -> trio.MemoryChannelStatistics:
        """The outgoing channel its writer drains: what every answer and event waits in."""
        return self._out_receive.statistics()

    def figures(self) -> dict[str, Any]:
        session = self._session
        return {
            "protocol": self.protocol,
            "requests": self.requests,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "settling": self.settling,
            "writes": self.writes,
            "events": session.events_subscribed if session else False,
            "outgoing": self._out_receive.statistics().current_buffer_used,
            "outgoing_bytes": self.outgoing_bytes,
            "outgoing_bytes_peak": self.outgoing_bytes_peak,
            "pushes_queued": session.pushes.queued if session else 0,
            "pushes_bytes": session.pushes.queued_bytes if session else 0,
            "lagged": session.pushes.skipped_total if session else 0,
            "unsubscribed_dropped": self.unsubscribed_dropped,
            "events_lagged": session.event_stream.lagged if session and session.event_stream else 0,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pushes = Subscriber[Push](
            PUSH_CAPACITY,
            LAG_DISCONNECT_LIMIT,
            max_bytes=MAX_PUSH_BYTES,
            size=push_size,
            reserve=PUSH_END_RESERVE,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._session = Session(
                    self.client_id,
                    self.services,
                    pushes,
                    nursery,
                    self,
                )
                self._scope = nursery.cancel_scope
                task_status.started()
                speaks_http: bool | None = True  # TCP: HTTP only
                if self.tcp is None:  # the Unix socket speaks both: the first bytes tell
                    speaks_http, self.prefix = await sniff(
                        self.stream, self.prefix, then=REQUEST_TIMEOUT
                    )
                if speaks_http is None:
                    log.info("client closed: no protocol told in time", client=self.client_id)
                elif speaks_http:
                    self.protocol = "http"
                    self._session.receives_pushes = False
                    await HttpConnection(
                        self.stream, self._session, self, self._write, self.tcp, self.prefix
                    ).serve()
                else:
                    self.protocol = "json-lines"
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
            self._out_send.close()  # answers settled from now on have nobody to read them
            with cleanup_scope():
                try:
                    if self._session is not None:
                        await self._session.close(self.cut_offs)
                finally:
                    # Even when the cleanups ran out of time (an actor they ask is down): the
                    # program must see its connection end, not wait on a silent socket.
                    await self.stream.aclose()

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
            await self._until_room()
            settling = request.op in SETTLING_OPS
            refused = self._over_cap(settling)
            if refused is not None:
                self.errors += 1
                await self._emit(error_frame(request.id, refused))
                continue
            self.in_flight += 1
            self.settling += settling
            if self.services.ops.switches(request):
                if await self._switch(request, reader):
                    return
                continue
            if self.services.ops.in_order(request):
                self._in_order_send.send_nowait(request)
                continue
            assert self._session is not None
            try:
                work = self.services.ops.begin(self._session, request)
            except OpError as error:
                await self._answer(request, error)
                continue
            nursery.start_soon(self._answer, request, work)
        if not hung_up(self.stream):
            await self._drain()

    async def _drain(self) -> None:
        """After the program closed its sending side: wait until every request read is
        answered and written, at most DRAIN_TIMEOUT (`printf … | nc -N -U` gets its answers).
        A program that closes the whole connection meanwhile is gone: the drain ends within
        HANGUP_CHECK, and what it still had running is cancelled (an end of input leaves its
        socket readable for good, so only polling tells a hang-up)."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            if not await unless_hung_up(self.stream, self._all_written):
                log.info("client hung up: requests cut off", client=self.client_id)
                return
        if self.in_flight:
            log.info("client ended its input: requests cut off", client=self.client_id)

    async def _all_written(self) -> None:
        """Wait until every request read is answered and its answer written."""
        while self.in_flight or self.outgoing_bytes:
            await self._next_progress()

    def _over_cap(self, settling: bool) -> OpError | None:
        """`too_many_requests` when one more request of its kind would pass its cap: requests
        that settle calls have a cap of their own, so calls can never crowd out answers."""
        if settling:
            if self.settling < MAX_CONCURRENT_SETTLING:
                return None
            cap, what = MAX_CONCURRENT_SETTLING, "answers or cancels of calls"
        elif self.in_flight - self.settling < MAX_CONCURRENT_REQUESTS:
            return None
        else:
            cap, what = MAX_CONCURRENT_REQUESTS, "requests"
        message = f"at most {cap} {what} in flight per connection"
        return OpError(ErrorCode.TOO_MANY_REQUESTS, message)

    async def _switch(self, request: Request, reader: LineReader) -> bool:
        """Run an op that may make this connection a binary stream, here in the reader's task
        so no line after it is read; True once the connection is done with: a pipe (then
        served), or its program hung up while the op ran (noticed within HANGUP_CHECK: the op
        is cancelled, so a stream_open's offer ends on both daemons at once)."""
        assert self._session is not None
        work: Awaitable[Any] | OpError
        if self.requests or self.errors or self.in_flight > 1:
            work = OpError(ErrorCode.CONFLICT, f"{request.op} must be a connection's first request")
        else:
            try:
                work = self.services.ops.begin(self._session, request)
            except OpError as error:
                work = error
        if not await unless_hung_up(self.stream, functools.partial(self._answer, request, work)):
            log.info("client hung up: its binary stream's op cut off", client=self.client_id)
            return True
        pipe = self._session.pipe
        if pipe is None:
            return False
        self._out_send.close()  # the answer was the last line: the writer turns to the pipe
        self.protocol = "binary-stream"
        await self._read_pipe(pipe, bytes(reader.buffer))
        return True

    async def _read_pipe(self, pipe: Pipe, data: bytes) -> None:
        """A binary stream's reader: frames from the socket go to core as their bytes come, cut
        into pieces of STREAM_PIECE_BYTES, waiting while core is STREAM_INBOX pieces behind (so
        a stalled peer stops this read, with at most STREAM_INBOX_BYTES and one read waiting
        for core). Returns (closing the connection; core tells the peer) when the program hangs
        up, noticed within HANGUP_CHECK even while core is behind: then all it sent is read at
        once, and without its end or an error frame among it the rest is dropped; with one, core
        has the stream's timeout from the close to take it in, else the connection closes
        without the rest (core cancels the stream). After an error frame (its own, bad framing,
        or data after its end frame, which only an error frame may follow) it waits for the
        writer to end the connection."""
        parser = FrameParser(STREAM_PIECE_BYTES)
        ended = False
        gone_by: float | None = None  # once the program hung up: when core must have it all
        async with pipe.from_socket:
            while True:
                items = collections.deque(parser.feed(data))
                while items:
                    item = items[0]
                    if ended and not isinstance(item, Reset):
                        item = Reset(
                            "protocol",
                            "data after the end frame: only an error frame may follow it",
                        )
                    if not await self._to_core(pipe, item, gone_by):
                        if gone_by is not None:
                            message = "binary stream cut off: its end was not taken in time"
                            log.info(message, client=self.client_id)
                            return
                        gone_by = trio.current_time() + pipe.timeout
                        items.extend(parser.feed(await _read_to_end(self.stream)))
                        if not ended and not any(isinstance(it, End | Reset) for it in items):
                            return  # it left before its end: core resets the stream at once
                        continue
                    items.popleft()
                    if isinstance(item, Reset):
                        await trio.sleep_forever()  # the writer ends the connection
                    ended = isinstance(item, End)
                data = bytes(await receive_some(self.stream, PIPE_RECEIVE))
                if not data:
                    return

    async def _to_core(self, pipe: Pipe, item: Item, gone_by: float | None) -> bool:
        """Hand `item` to core, waiting while it is behind; False (not handed) when the program
        closed its connection meanwhile, or, once it did (`gone_by` set), at `gone_by`."""
        while True:
            watch = trio.current_time() + HANGUP_CHECK
            with trio.move_on_at(watch if gone_by is None else gone_by):
                await pipe.from_socket.send(item)
                return True
            if gone_by is not None or hung_up(self.stream):
                return False

    async def _write_pipe(self, pipe: Pipe) -> None:
        """A binary stream's writer: what core queued goes out, joined into writes, and its
        credit cost goes back to core once written. It ends the connection after an error
        frame, or when core closes the pipe (the stream finished both ways, or was reset);
        once the stream is over, the rest has a deadline (`_WriteDeadline`), past which the
        connection is closed at once."""
        assert self._scope is not None
        with trio.CancelScope() as writes:
            deadline = _WriteDeadline(writes)
            async with pipe.consumed, trio.open_nursery() as nursery:
                nursery.start_soon(deadline.after_reset, pipe)
                nursery.start_soon(deadline.after_finish, pipe)
                async for item in pipe.to_socket:
                    batch, size = [item], 0
                    while isinstance(batch[-1], bytes) and size < PIPE_WRITE_BYTES:
                        try:
                            batch.append(pipe.to_socket.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        size += len(batch[-1]) if isinstance(batch[-1], bytes) else 0
                    await self._write(
                        b"".join(part for it in batch for part in pipe_frames.encode(it)),
                        progress=deadline.wrote,
                    )
                    cost = sum(frame_cost(it) for it in batch if isinstance(it, bytes))
                    if cost:
                        await pipe.consumed.send(cost)
                    if isinstance(batch[-1], Reset):
                        break
                nursery.cancel_scope.cancel()
        if writes.cancelled_caught and deadline.finished:
            log.info("binary stream cut off: its last data was not read", client=self.client_id)
        elif writes.cancelled_caught:
            log.info("binary stream cut off: its error frame was not read", client=self.client_id)
        self._scope.cancel()

    async def _answer(self, request: Request, work: Awaitable[Any] | OpError) -> None:
        """Answer `request` with the outcome of its begun `work` (or the error it began with)."""
        assert self._session is not None
        self.requests += 1
        try:  # in flight until its answer is queued: one the writer can't take yet still counts
            frame = await self._outcome_frame(request, work)
            if frame is not None:
                await self._emit(frame)
        finally:
            self._settled([request])

    def _settled(self, requests: Sequence[Request]) -> None:
        """`requests` are no longer in flight: their answers are queued (or they have none)."""
        self.in_flight -= len(requests)
        self.settling -= sum(request.op in SETTLING_OPS for request in requests)
        self._progress.set()

    async def _outcome_frame(
        self, request: Request, work: Awaitable[Any] | OpError
    ) -> bytes | None:
        """The answer frame of `request`, or None for a notification that succeeded."""
        assert self._session is not None
        try:
            if isinstance(work, OpError):
                raise work
            data = await finish(self._session, request, work)
        except OpError as error:
            self.errors += 1
            return error_frame(request.id, error)
        return None if request.id is None else ok_frame(request.id, data)

    async def _run_in_order(self) -> None:
        """Run in-order requests as they come: all those queued at once go to the op table
        together, so consecutive channel sends run as one."""
        assert self._session is not None
        async for first in self._in_order_receive:
            queued = [first, *take_queued(self._in_order_receive, MAX_CONCURRENT_REQUESTS - 1)]
            await self.services.ops.run_in_order(self._session, queued, self._answer_all)

    async def _answer_all(self, requests: Sequence[Request], outcome: Outcome) -> None:
        """Answer requests that share one outcome (or have one each), in order, in one
        outgoing frame; they are in flight until it is queued."""
        self.requests += len(requests)
        try:
            await self._emit_all(requests, outcome)
        finally:
            self._settled(requests)

    async def _emit_all(self, requests: Sequence[Request], outcome: Outcome) -> None:
        """Queue the answers of requests that share `outcome` (or have one each)."""
        if isinstance(outcome, Each):
            pairs = list(zip(requests, outcome.outcomes, strict=True))
            self.errors += sum(isinstance(own, OpError) for _, own in pairs)
            frames = b"".join(_answer_frame(request.id, own) for request, own in pairs)
            if frames:
                await self._emit(frames)
            return
        if isinstance(outcome, OpError):
            self.errors += len(requests)
            await self._emit(b"".join(error_frame(r.id, outcome) for r in requests))
            return
        answered = [request.id for request in requests if request.id is not None]
        if answered:  # notifications that succeeded get no answer
            after_id = ok_frame(None, outcome)[len(_NULL_ID) :]
            await self._emit(b"".join(_id_head(request_id) + after_id for request_id in answered))

    async def send_event(self, event: Event) -> None:
        """Write one logged event (used for replay)."""
        await self._emit(event_frame(event.kind, wire_event(event)))

    async def send_frame(self, kind: str, data: dict[str, Any]) -> None:
        """Write one event frame that is not logged (e.g. a replay gap notice)."""
        await self._emit(event_frame(kind, data))

    async def _forward_pushes(self, pushes: Subscriber[Push]) -> None:
        """Move pushed events to the outgoing channel, those queued together as one frame, and
        report lag where events were skipped: between the events before the hole and after.
        The lines of a channel subscription that ended are dropped (`_live`)."""
        async for item in pushes:
            if isinstance(item, Lagged):
                marker: Lagged | None = item
            elif (line := self._live(item)) is None:
                continue
            else:
                marker = await self._emit_batch(line, pushes)
            if marker is not None:
                await report_lag(marker, pushes, self)

    def _live(self, push: Push) -> bytes | None:
        """The line of `push`, or None (counted) when its channel subscription ended. The
        unsubscribe ends it before queueing its answer, and a line found live here is queued
        for the writer with no checkpoint in between (`_emit` keeps the order of frames), so
        no line of the channel is written after that answer."""
        reader, line = push
        if reader is not None and reader.ended:
            self.unsubscribed_dropped += 1
            return None
        return line

    async def _emit_batch(self, first: bytes, pushes: Subscriber[Push]) -> Lagged | None:
        """Emit `first` and the live events queued behind it (up to PUSH_BATCH,
        PUSH_BATCH_BYTES) as one frame; a lag marker ends the batch and is returned, to be
        reported after it."""
        frames, size = [first], len(first)
        marker: Lagged | None = None
        while pushes.queued and len(frames) < PUSH_BATCH and size < PUSH_BATCH_BYTES:
            event = await pushes.receive()  # an event is queued: answers at once
            if isinstance(event, Lagged):
                marker = event
                break
            line = self._live(event)
            if line is not None:
                frames.append(line)
                size += len(line)
        await self._emit(b"".join(frames))
        return marker

    async def _emit(self, frame: bytes) -> None:
        """Queue `frame` for the writer, in order; waits only while the outgoing channel is
        full (`hand_over`): of frames, or of bytes (then SlowConsumer after STALL_TIMEOUT)."""
        if self._room.locked() or not self._fits(len(frame)):
            async with self._room:  # fair: frames waiting for room keep their order
                with trio.move_on_after(STALL_TIMEOUT):
                    while not self._fits(len(frame)):
                        await self._next_progress()
                if not self._fits(len(frame)):
                    raise SlowConsumer(f"{self.outgoing_bytes} bytes unread")
        self.outgoing_bytes += len(frame)
        self.outgoing_bytes_peak = max(self.outgoing_bytes_peak, self.outgoing_bytes)
        try:
            await hand_over(self._out_send, frame)
        except BaseException:
            self._written(len(frame))
            raise

    def _fits(self, size: int) -> bool:
        """Whether a frame of `size` bytes may be queued now: within MAX_OUTGOING_BYTES, or
        alone."""
        return not self.outgoing_bytes or self.outgoing_bytes + size <= MAX_OUTGOING_BYTES

    async def _until_room(self) -> None:
        """Wait while frames wait for room in the outgoing bytes: a program that reads no
        answers gets no new request started (the waiting frame cuts it off in the end)."""
        while self._room.locked():
            await self._next_progress()

    async def _next_progress(self) -> None:
        """Wait until a request settles or a write is done (several tasks may wait at once)."""
        if self._progress.is_set():
            self._progress = trio.Event()
        await self._progress.wait()

    def _written(self, size: int) -> None:
        """`size` bytes queued for the socket were written (or never queued): not held."""
        self.outgoing_bytes -= size
        self._progress.set()

    async def _write_frames(self) -> None:
        """The connection's one writer: each write carries everything queued (up to
        WRITE_BATCH frames); once the connection became a binary stream, its frames."""
        async for frame in self._out_receive:
            data = b"".join([frame, *take_queued(self._out_receive, WRITE_BATCH - 1)])
            await self._write(data)
            self._written(len(data))
        if self._session is not None and self._session.pipe is not None:
            await self._write_pipe(self._session.pipe)

    async def _write(self, data: bytes, progress: Callable[[], None] | None = None) -> None:
        """The one place bytes reach the socket: the writer task's, or the HTTP handler's
        (`progress`: see `send_all`)."""
        self.writes += 1
        try:
            await send_all(self.stream, data, progress)
        except trio.Cancelled:
            await trio.aclose_forcefully(self.stream)  # a frame may be cut: nothing may follow it
            raise


_NULL_ID = b'{"id":null'  # how every answer frame begins when its id is None


@attrs.define(eq=False)
class _WriteDeadline:
    """The deadline of a binary stream's writes once its stream is over, so a program that
    does not read what is left keeps neither its connection nor a window of data for ever:
    all up to the error frame within RESET_WRITE_TIMEOUT of a reset; once it finished, some
    bytes taken by the socket within FINISHED_STALL_TIMEOUT of the last (a program that reads
    slowly still gets all its data, however long a write of it takes)."""

    writes: trio.CancelScope
    finished: bool = False

    async def after_reset(self, pipe: Pipe) -> None:
        """Set the reset's deadline once core queued the stream's error frame."""
        with contextlib.suppress(trio.EndOfChannel):
            await pipe.resetting.receive()  # core only closes it
        self.writes.deadline = trio.current_time() + RESET_WRITE_TIMEOUT

    async def after_finish(self, pipe: Pipe) -> None:
        """Start the finished stream's deadlines once core says it finished."""
        with contextlib.suppress(trio.EndOfChannel):
            await pipe.finished.receive()  # core only closes it
        self.finished = True
        self.wrote()

    def wrote(self) -> None:
        """The socket took some bytes: once the stream finished, what follows has its time."""
        if self.finished:
            self.writes.deadline = trio.current_time() + FINISHED_STALL_TIMEOUT


async def _read_to_end(stream: trio.abc.ReceiveStream) -> bytes:
    """What a program that closed its connection still had on the way: never waits, as all of
    it is queued at its socket (a few hundred KiB, as the kernel bounds it)."""
    chunks = []
    with contextlib.suppress(trio.BrokenResourceError):  # it left data of ours unread
        while chunk := await receive_some(stream, PIPE_RECEIVE):
            chunks.append(chunk)
    return b"".join(chunks)


def _answer_frame(request_id: RequestId | None, outcome: Outcome) -> bytes:
    """One request's answer frame (nothing for a notification that succeeded)."""
    if isinstance(outcome, OpError):
        return error_frame(request_id, outcome)
    return b"" if request_id is None else ok_frame(request_id, outcome)


def _id_head(request_id: RequestId) -> bytes:
    """The start of an answer frame with this id, as `ok_frame` writes it."""
    if isinstance(request_id, int):
        return b'{"id":%d' % request_id
    return b'{"id":' + json.dumps(request_id, ensure_ascii=False).encode()
