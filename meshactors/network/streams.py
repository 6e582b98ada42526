"""The `streams` part of a network's core: the table of binary streams and their senders.

Core owns every stream's state (credit, sequence numbers, ends); a stream's connection talks
to it only through the channels of its `Pipe`. Per open stream two tasks of core run: one
sends what the connection read from its socket as `stream_data` while credit allows (the
stream's own, and room in what all streams to its peer may have in flight: `PeerBudgets`), one
hands credit back as the connection writes what arrived. Frame handlers run in core's task and
never wait: arriving bytes fit the connection's channel because the sender never has more
than a window of credit (docs/protocol.md, "Binary streams"). A program that closes its
connection after its end still has what it sent go out; the stream stays in the table for
that (`left`), until it finishes, is reset, or its `due` time passes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable

import attrs
import trio

from meshactors.actors import Pending
from meshactors.network.app_wire import AppWire, Postbox
from meshactors.network.peers import PeerStatus
from meshactors.network.rpc import MAX_TIMEOUT_MS, RpcClient, new_request_id
from meshactors.network.stream_frames import (
    STREAM_WINDOW_BYTES,
    StreamCredit,
    StreamData,
    StreamEnd,
    StreamOpen,
    StreamReady,
    StreamReset,
    wire_error,
)
from meshactors.network.stream_pipe import STREAM_FRAME_COST, Pipe, frame_cost, open_pipe
from meshactors.network.stream_table import BinaryStreamTable, PeerBudgets, StreamState
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Frame
from meshactors.wire.pipe_frames import END, End, Item, Reset

STREAM_CHUNK_BYTES = 128 * 1024  # bytes in one stream_data frame between daemons
SWEEP_INTERVAL = 1.0  # seconds between sweeps for streams nobody accepted in time
TO_SOCKET_CAPACITY = STREAM_WINDOW_BYTES // STREAM_FRAME_COST + 2  # a window of frames + end
_OPENER_CODES = {"no_handler", "timeout", "peer_not_active", "cancelled", "remote_error"}
_LOCAL_CODES = _OPENER_CODES | {"protocol", "frame_too_large", "stopped"}
_FRAMING_CODES = {"frame_too_large", "protocol"}  # resets a connection makes of bad framing


@attrs.define(eq=False)
class Streams:
    """One network's binary streams, a part of its `core` actor."""

    network: str
    wire: AppWire
    tell: Callable[[Callable[[], None]], bool]  # runs a function in core's task, not waiting
    binary_owner: Callable[[str], RpcClient | None]  # who serves a method's streams
    postbox: Postbox = attrs.field(init=False)
    counters: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    table: BinaryStreamTable = attrs.field(factory=BinaryStreamTable, init=False)
    budgets: PeerBudgets = attrs.field(factory=PeerBudgets, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _removed: bool = attrs.field(default=False, init=False)  # the network is being removed

    def __attrs_post_init__(self) -> None:
        self.postbox = Postbox(self.wire)
        self.wire.register(StreamOpen.tag, self._on_open)
        self.wire.register(StreamReady.tag, self._on_ready)
        self.wire.register(StreamData.tag, self._on_data)
        self.wire.register(StreamCredit.tag, self._on_credit)
        self.wire.register(StreamEnd.tag, self._on_end)
        self.wire.register(StreamReset.tag, self._on_reset)

    def figures(self) -> dict[str, object]:
        return {
            "open": len(self.table),
            "streams": [
                {
                    "stream_id": s.local_id,
                    "peer": s.peer,
                    "method": s.method,
                    "opener": s.opener,
                    "flowing": s.core is not None,
                    "left": s.left,
                    "send_credit": s.send_credit,
                    "held": s.held,
                }
                for s in self.table
            ],
            "in_flight": self.budgets.in_flight(),
            "in_flight_peak": self.budgets.peak,
            "counters": dict(self.counters),
            "dropped": dict(self.postbox.dropped),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._sweep)
                task_status.started()
                await self.postbox.drain()
        finally:
            self._nursery = None
            self._stop_all(f"streams of {self.network} stopped")

    def network_removed(self) -> None:
        """The network is being removed: its streams end with `stopped` now, before the goodbye
        to the peers and the link's end would make them `peer_not_active` (the peers learn it
        from the goodbye), and no stream opens any more."""
        self._removed = True
        self._stop_all(f"the network {self.network} was removed")

    def _stop_all(self, message: str) -> None:
        """End every stream with `stopped` for its local program; the peers learn from the
        network's end (a goodbye, or the broker saying we left)."""
        for state in self.table:
            self._reset(state, "stopped", message, peer=False)

    @property
    def _running(self) -> bool:
        """Whether streams may open: the part runs, and the network is not being removed."""
        return self._nursery is not None and not self._removed

    # -- the ops ---------------------------------------------------------------------------

    async def open(self, peer: str, method: str, timeout_ms: int, taker: str) -> Pending[Pipe]:
        """Open a stream to `peer`'s owner of `method` for the connection `taker` (its client
        id); the Pending gives the connection's pipe once the peer's program accepted (OpError
        with the peer's refusal). The peer forgets the offer after `timeout_ms`."""
        self._check_room()
        wire_id = new_request_id()
        timeout = timeout_ms / 1000
        state = StreamState(wire_id, wire_id, peer, method, True, timeout, taker=taker)
        state.ready = Pending(lambda: _told(self.tell(functools.partial(self._abandon, state))))
        # The op stops waiting then and tells us; should that word not reach core (its lane
        # full), the sweep still ends the offer a beat later.
        state.due = trio.current_time() + state.timeout + SWEEP_INTERVAL
        self.table.add(state)
        try:
            await self.wire.send(peer, StreamOpen(wire_id, method, timeout_ms))
        except BaseException:
            self._forget(state)
            raise
        self.counters["opened"] += 1
        return state.ready

    async def accept(self, local_id: str, taker: str) -> Pipe:
        """Take an incoming stream offered by `stream_incoming` for the connection `taker`
        (its client id): tell the opener and let the bytes flow (OpError unknown_request when
        none waits under that id)."""
        state = self.table.local(local_id)
        if state is None or state.opener or state.core is not None:
            raise OpError(ErrorCode.UNKNOWN_REQUEST, f"no incoming stream {local_id[:64]!r} waits")
        state.taker = taker
        pipe = self._attach(state)
        try:
            await self.wire.send(state.peer, StreamReady(state.wire_id))  # before any data
        except BaseException:
            self._reset(state, "cancelled", "the accept could not reach the opener", local=False)
            raise
        self._start(state)
        self.counters["accepted"] += 1
        return pipe

    def untaken(self, taker: str) -> None:
        """The connection `taker` closed without taking the pipe its stream_open or
        stream_accept was to get (it hung up, or stopped waiting, about when core answered):
        the stream that op set up ends `cancelled` for the peer, its place and budget freed, as
        nobody reads or writes it, whether it flows (attached with nobody holding it) or still
        waits for the peer. Nothing happens when it is gone already. A stream op is a
        connection's first request, so one connection sets up one stream at most."""
        for state in self.table:
            if state.taker == taker:
                message = "the other program went away before it took the stream"
                self._reset(state, "cancelled", message, local=False)

    def _check_room(self) -> None:
        if not self._running:
            raise OpError(ErrorCode.UNAVAILABLE, f"streams of {self.network} are not running")
        if not self.table.has_room():
            raise OpError(ErrorCode.CONFLICT, f"this device has {self._table_full()}")

    def _table_full(self) -> str:
        """What a full table says of itself: its limit, which a stream to the device itself
        fills twice (both of its ends are entries of the one table)."""
        return (
            f"{self.table.limit} streams open in {self.network}, its limit (MAX_STREAMS; a stream"
            " from a device to itself takes two places, one for each end)"
        )

    async def _sweep(self) -> None:
        """End the streams nobody accepted in time: incoming ones the opener stopped waiting
        for (its reset may have been lost), and our own offers whose op gave up (its word may
        not have reached core), so neither holds a place for ever; and those whose program
        left after its end and that did not finish within the stream's timeout."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            now = trio.current_time()
            for state in [s for s in self.table if s.due <= now]:
                if state.core is None:
                    self._reset(state, "timeout", "not accepted in time", local=False)
                elif state.left:
                    message = "the other program went away, and what it sent was not taken in time"
                    self._reset(state, "cancelled", message, local=False)

    def _abandon(self, state: StreamState) -> None:
        """The opener stopped waiting for the peer to accept (timeout or its connection went)."""
        self._reset(state, "cancelled", "the opener stopped waiting", local=False)

    # -- table -----------------------------------------------------------------------------

    def _forget(self, state: StreamState) -> None:
        """Drop a stream from the table: its tasks stop, its connection reads what was
        queued for it and then the end of the channel, and what it had in flight goes back to
        its peer's budget (credit for it that comes later finds no stream)."""
        if self.table.forget(state):
            self._give_back(state.peer, STREAM_WINDOW_BYTES - state.send_credit)
        state.scope.cancel()
        if state.core is not None:  # the connection reads what was queued, then the end
            state.core.to_socket.close()
        state.wake()

    def _attach(self, state: StreamState) -> Pipe:
        pipe, core = open_pipe(
            state.local_id,
            self.network,
            state.peer,
            state.method,
            state.timeout,
            TO_SOCKET_CAPACITY,
        )
        state.core = core
        return pipe

    def _start(self, state: StreamState) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._run_stream, state)

    def _reset(
        self, state: StreamState, code: str, message: str, *, local: bool = True, peer: bool = True
    ) -> None:
        """End a stream both ways for `code`: the local program reads an error frame (or its
        waiting op fails) unless `local` is False, the peer gets stream_reset unless `peer`
        is False. A stream ended already is left alone."""
        if not self.table.holds(state):
            return
        self.counters[f"reset_{code}"] += 1
        if local:
            self._tell_local(state, code, message)
        if peer:
            frame = StreamReset(state.wire_id, state.opener, wire_error(code, message))
            self.postbox.post(state.peer, frame)
        self._forget(state)

    def _tell_local(self, state: StreamState, code: str, message: str) -> None:
        """The local program learns the stream failed: its waiting op, or an error frame."""
        if state.ready is not None and not state.ready.settled:
            known = code if code in _OPENER_CODES else "remote_error"
            state.ready.fail(OpError(ErrorCode(known), message))
        elif state.core is not None:
            gone = (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError)
            with contextlib.suppress(*gone):  # TO_SOCKET_CAPACITY keeps a place for it
                state.core.to_socket.send_nowait(Reset(code, message))
            state.core.resetting.close()  # the connection writes it soon, or closes

    def _maybe_finish(self, state: StreamState) -> None:
        """Both directions ended: the stream is done. Once our end went out, data the peer sent
        a program that left is lost: the peer learns it (cancelled) instead. Whether nothing was
        lost is known once the credit task took all the connection wrote and marked it `left`:
        a stream whose connection closed before that waits for it."""
        if not self.table.holds(state) or not state.local_ended:
            return
        if state.lost:
            self._reset(state, "cancelled", "the other program went away", local=False)
        elif state.remote_ended and (state.left or not _connection_closed(state)):
            self.counters["finished"] += 1
            assert state.core is not None
            state.core.finished.close()  # what is left for the connection now has a deadline
            self._forget(state)

    def _left(self, state: StreamState) -> None:
        """The program's connection closed: nothing reaches it any more, and what arrived for
        it unwritten is lost. What it sent up to its end still goes out, within the stream's
        timeout (the sweep ends it then); its sender resets a stream it left before its end."""
        if state.left:
            return
        state.left = True
        state.lost = state.held > 0
        state.due = trio.current_time() + state.timeout
        state.wake()  # a sender waiting for credit looks at what the program still sent
        self._maybe_finish(state)

    def _closed_early(self, state: StreamState) -> None:
        """The program closed its connection before its end: the peer's program is cancelled,
        what was not sent yet is dropped."""
        message = "the other program closed its connection before the stream finished"
        self._reset(state, "cancelled", message, local=False)

    # -- a stream's tasks ------------------------------------------------------------------

    async def _run_stream(self, state: StreamState) -> None:
        with state.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._return_credit, state)
                await self._send_out(state)

    async def _send_out(self, state: StreamState) -> None:
        """Send what the connection read, in order, as credit allows; then its end, and an
        error frame after it if one comes (one its connection made of bad framing goes back to
        the program too, so it does not take the stream for finished). The connection closing
        after the end leaves the rest to go out still, and the credit task marks the stream
        `left` once it took all the connection wrote (so `held` is exact); closing before it
        resets the stream."""
        try:
            while (item := await self._next_out(state)) is not None:
                if isinstance(item, Reset):  # the program's error frame, or its bad framing
                    message = item.message
                    if item.code in _FRAMING_CODES:  # the program learns what it did wrong
                        self._tell_local(state, item.code, item.message)
                        message = f"the other program broke the stream's framing: {message}"
                    self._reset(state, "remote_error", message, local=False)
                    return
                if isinstance(item, End):  # only an error frame may follow it
                    await self._send(state, StreamEnd(state.wire_id, state.opener, state.seq_out))
                    state.local_ended = True
                    self._maybe_finish(state)
                    continue
                await self._send_data(state, item)
        except OpError as failed:
            self._reset(state, failed.code.value, failed.message, peer=False)
            return
        if not state.local_ended:
            self._left(state)
            self._closed_early(state)

    async def _next_out(self, state: StreamState) -> Item | None:
        """The next item the program sent (those read at once when it left first); None once
        its connection closed and all was taken."""
        assert state.core is not None
        if state.unsent:
            return state.unsent.popleft()
        try:
            return await state.core.from_socket.receive()
        except trio.EndOfChannel:
            return None

    async def _send_data(self, state: StreamState, data: bytes) -> None:
        for start in range(0, len(data), STREAM_CHUNK_BYTES):
            piece = data[start : start + STREAM_CHUNK_BYTES]
            cost = frame_cost(piece)
            while (seq := self._spend(state, cost)) is None:
                await self._wait_credit(state)
            await self._send(state, StreamData(state.wire_id, state.opener, seq, piece))
            self.counters["bytes_out"] += len(piece)

    def _spend(self, state: StreamState, cost: int) -> int | None:
        """Spend `cost` of the stream's credit and of its peer's budget: the data frame's
        sequence number, or None (nothing spent) while either is short."""
        if cost > state.send_credit or not self.budgets.take(state.peer, cost):
            return None
        return state.spend(cost)

    def _give_back(self, peer: str, amount: int) -> None:
        """`amount` in flight to `peer` is back in its budget: streams to it that found no room
        look again."""
        if amount and self.budgets.give_back(peer, amount):
            for state in self.table:
                if state.peer == peer:
                    state.wake()

    async def _wait_credit(self, state: StreamState) -> None:
        """Wait for credit (the stream's own, or room in its peer's budget). Once the program
        left, everything it still sent is read at once: with neither its end nor an error frame
        in it, the stream is reset (which cancels this task) rather than after the credit for
        all of it. The event is taken before that read: credit arriving while it yields wakes
        this wait, not a fresh event nobody sets."""
        assert state.core is not None
        changed = state.changed
        if state.left:
            async for item in state.core.from_socket:  # closed with the connection
                state.unsent.append(item)
            if all(isinstance(item, bytes) for item in state.unsent):
                self._closed_early(state)
        await changed.wait()

    async def _send(self, state: StreamState, frame: Frame) -> None:
        if not self.wire.send_nowait(state.peer, frame):
            await self.wire.send(state.peer, frame)

    async def _return_credit(self, state: StreamState) -> None:
        """Hand credit back as the connection writes what arrived, waiting for room to send it
        (a credit dropped would stall the stream for good); the connection's end of the channel
        closing means the program left."""
        assert state.core is not None
        try:
            async for cost in state.core.consumed:
                if credit := state.written(cost):
                    await self._send(state, StreamCredit(state.wire_id, state.opener, credit))
        except OpError as failed:
            self._reset(state, failed.code.value, failed.message, peer=False)
            return
        self._left(state)

    # -- frames from peers -----------------------------------------------------------------

    def _find(self, sender: str, wire_id: str, *, ours: bool) -> StreamState | None:
        """The stream a frame from `sender` is for; None (the frame dropped) when none is open:
        counted as `late_frames` when it ended lately (the frame crossed its end or reset on
        the way), else as `stray_frames`."""
        state = self.table.find(sender, wire_id, ours=ours)
        if state is None:
            late = self.table.ended_lately(sender, wire_id, ours=ours)
            self.counters["late_frames" if late else "stray_frames"] += 1
        return state

    def _on_open(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, StreamOpen)
        owner = self.binary_owner(frame.method)
        refusal = None
        on = self.wire.own_name
        if owner is None:
            refusal = ("no_handler", f"no one serves binary streams of {frame.method!r} on {on}")
        elif not self._running:
            refusal = ("remote_error", f"busy: the streams of {self.network} on {on} stopped")
        elif not self.table.has_room():
            refusal = ("remote_error", f"busy: {on} has {self._table_full()}")
        elif self.table.find(sender, frame.id, ours=False) is not None:
            self.counters["stray_frames"] += 1
            return
        if refusal is not None:
            self.postbox.post(sender, StreamReset(frame.id, False, wire_error(*refusal)))
            return
        assert owner is not None
        wait = min(frame.timeout_ms, MAX_TIMEOUT_MS) / 1000
        state = StreamState(new_request_id(), frame.id, sender, frame.method, False, wait)
        state.due = trio.current_time() + wait
        event = {
            "network": self.network,
            "stream_id": state.local_id,
            "from": sender,
            "method": frame.method,
        }
        if not owner.push("stream_incoming", event):
            busy = wire_error("remote_error", "the serving program is not keeping up")
            self.postbox.post(sender, StreamReset(frame.id, False, busy))
            return
        self.table.add(state)
        self.counters["incoming"] += 1

    def _on_ready(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, StreamReady)
        state = self._find(sender, frame.id, ours=True)
        if state is None or state.ready is None or state.ready.settled:
            return
        state.ready.resolve(self._attach(state))
        self._start(state)

    def _on_data(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, StreamData)
        state = self._find(sender, frame.id, ours=not frame.opener)
        if state is None:
            return
        if state.core is None or state.remote_ended:
            self.counters["stray_frames"] += 1
            return
        if not state.arrived(frame.seq, frame_cost(frame.data)):
            self._reset(state, "protocol", "a data frame out of sequence or beyond its credit")
            return
        self.counters["bytes_in"] += len(frame.data)
        self._to_socket(state, frame.data)
        self._maybe_finish(state)

    def _to_socket(self, state: StreamState, item: Item) -> None:
        """Queue what arrived for the program's socket; data for a program that left is lost.
        A connection found closed is marked `left` by the credit task, not here: `held` is exact
        only once that task took all the connection wrote (it may be sending a credit)."""
        assert state.core is not None
        if not state.left:
            try:
                state.core.to_socket.send_nowait(item)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except trio.WouldBlock:  # credit keeps this from happening unless the peer cheats
                self._reset(state, "protocol", "more frames than the window holds")
                return
        state.lost = state.lost or isinstance(item, bytes)

    def _on_credit(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, StreamCredit)
        state = self._find(sender, frame.id, ours=not frame.opener)
        if state is None:
            return
        if not state.granted(frame.bytes):
            self._reset(state, "protocol", "credit beyond the window")
            return
        self._give_back(state.peer, frame.bytes)

    def _on_end(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, StreamEnd)
        state = self._find(sender, frame.id, ours=not frame.opener)
        if state is None or state.core is None or state.remote_ended:
            return
        if frame.seq != state.seq_in:
            self._reset(state, "protocol", "the end does not follow the last data frame")
            return
        state.remote_ended = True
        self._to_socket(state, END)
        self._maybe_finish(state)

    def _on_reset(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, StreamReset)
        state = self._find(sender, frame.id, ours=not frame.opener)
        if state is None:
            return
        code = frame.error.code if frame.error.code in _LOCAL_CODES else "remote_error"
        self._reset(state, code, frame.error.message, peer=False)

    def on_peer_status(self, device_id: str, status: PeerStatus) -> None:
        """A peer that stops being active ends its streams at once."""
        if status is PeerStatus.ACTIVE:
            return
        for state in [s for s in self.table if s.peer == device_id]:
            self._reset(state, "peer_not_active", f"peer {device_id} left", peer=False)
        self.table.peer_gone(device_id)


def _connection_closed(state: StreamState) -> bool:
    """Whether the program's connection closed its end of the stream's pipe (it may not be
    marked `left` yet)."""
    assert state.core is not None
    return state.core.to_socket.statistics().open_receive_channels == 0


def _told(_sent: bool) -> None:
    """Ignore whether core took a message nobody waits for."""
