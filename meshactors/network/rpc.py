"""The `rpc` part of one network's core: method claims, calls served here, calls made from here.

Claims: the last connection to claim a method owns it; the one displaced is told. A served
call is pushed to the owner as `rpc_inbound` under an id minted here; a call made from here
waits for `rpc_result` (or `rpc_chunk`… `rpc_end`). Every call has a deadline. When a
connection goes, its claims go, the callers of its unanswered calls hear `handler_gone` at
once, and its own calls are cancelled on the serving side.

Streams are flow-controlled by credit: the serving side may be STREAM_WINDOW chunks ahead of
what the caller's daemon handed to its connection; `rpc_stream_chunk` waits for credit, so a
producer that outruns its caller waits instead of filling the link or the caller's memory.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from meshactors.actors import Pending
from meshactors.entropy import random_bytes
from meshactors.network.app_frames import (
    RpcCall,
    RpcCancel,
    RpcChunk,
    RpcCredit,
    RpcEnd,
    RpcResult,
    WireError,
    payload_of_frame,
)
from meshactors.network.app_wire import AppWire, Postbox
from meshactors.network.calls import DeadlineHeap, ServedCalls
from meshactors.network.claims import Claim, ClaimTable
from meshactors.network.payload import Payload
from meshactors.network.peers import PeerStatus
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Frame

DEFAULT_TIMEOUT_MS = 30_000  # a call's deadline when the caller names none
MAX_TIMEOUT_MS = 600_000  # the longest deadline a call may ask for
MAX_INBOUND_CALLS = 4096  # calls served here at once, per network
MAX_OUTBOUND_CALLS = 4096  # calls made from here at once, per network
STREAM_WINDOW = 256  # chunks the serving side may send ahead of the caller's credit
SERVE_GRACE = 5.0  # seconds past the caller's deadline before the serving side forgets a call
SWEEP_INTERVAL = 1.0  # seconds between sweeps for served calls past their deadline and grace,
# and for what connections that are gone left behind (claims, calls, channel subscriptions)


class RpcClient(Protocol):
    """A local connection as RPC sees it (a daemon `Session` is one)."""

    client_id: str

    @property
    def gone(self) -> bool:
        """Whether the connection ended: what it holds here counts as released."""

    def push(self, kind: str, data: dict[str, Any], *, reserved: bool = False) -> bool: ...


def new_request_id() -> str:
    """An unguessable id minted by the daemon: 16 random bytes as 32 hex digits."""
    return random_bytes(16).hex()


def check_timeout(timeout_ms: int | None) -> int:
    """The deadline of a call in ms (OpError invalid_params outside 1..MAX_TIMEOUT_MS)."""
    if timeout_ms is None:
        return DEFAULT_TIMEOUT_MS
    if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise OpError(ErrorCode.INVALID_PARAMS, f"timeout_ms must be 1-{MAX_TIMEOUT_MS}")
    return timeout_ms


@attrs.define(eq=False)
class StreamFlow:
    """A streamed answer's credit (chunks it may still send) and what waits to leave, in
    order: chunks and then the end, each with the Pending its op waits on."""

    credit: int = STREAM_WINDOW
    queued: collections.deque[tuple[RpcChunk | RpcEnd, Pending[dict[str, Any]]]] = attrs.field(
        factory=collections.deque
    )
    ended: bool = False  # the end is queued: no chunk may follow it
    changed: trio.Event = attrs.field(factory=trio.Event)  # credit, a queued frame, or the end

    def grant(self, chunks: int) -> None:
        """The caller took `chunks` more: wake the sender."""
        self.credit += chunks
        self.wake()

    def wake(self) -> None:
        """Wake the call's sender to look again."""
        self.changed.set()
        self.changed = trio.Event()

    def ready(self) -> bool:
        """Whether the head of the queue may leave now (a chunk needs credit, the end not)."""
        return bool(self.queued) and (self.credit > 0 or isinstance(self.queued[0][0], RpcEnd))


@attrs.define(eq=False)
class InboundCall:
    """A call served here: the caller's device and id, and the connection answering it."""

    id: str
    caller: str
    remote_id: str
    client: RpcClient
    forget_at: float  # trio time: the caller gave up by then (deadline + SERVE_GRACE)
    flow: StreamFlow | None  # a streamed answer's credit; None for a single answer
    cancelled: str | None = None

    @property
    def stream(self) -> bool:
        """Whether the call is answered with a stream."""
        return self.flow is not None


@attrs.define(eq=False)
class Outbound:
    """A call made from here for a local connection."""

    id: str
    peer: str
    client: RpcClient
    stream: bool
    deadline: float  # trio time
    answer: Pending[dict[str, Any]] | None = None  # single calls: the answer, as the op gives it
    unacknowledged: int = 0  # chunks handed on since the last credit
    finished: bool = False


@attrs.define(eq=False)
class Rpc:
    """One network's method claims and in-flight calls, a part of its `core` actor."""

    network: str
    wire: AppWire
    tell: Callable[[Callable[[], None]], bool]  # runs a function in core's task, not waiting
    postbox: Postbox = attrs.field(init=False)
    counters: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _claims: ClaimTable[RpcClient] = attrs.field(factory=ClaimTable, init=False)
    _inbound: ServedCalls[InboundCall] = attrs.field(factory=ServedCalls, init=False)
    _outbound: dict[str, Outbound] = attrs.field(factory=dict, init=False)
    _deadlines: DeadlineHeap = attrs.field(factory=DeadlineHeap, init=False)
    _expiry: trio.CancelScope | None = attrs.field(default=None, init=False)  # wakes the expirer
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.postbox = Postbox(self.wire)
        self.wire.register(RpcCall.tag, self._on_call)
        self.wire.register(RpcResult.tag, self._on_result)
        self.wire.register(RpcChunk.tag, self._on_chunk)
        self.wire.register(RpcEnd.tag, self._on_end)
        self.wire.register(RpcCancel.tag, self._on_cancel)
        self.wire.register(RpcCredit.tag, self._on_credit)

    def figures(self) -> dict[str, object]:
        return {
            "claims": {method: c.owner.client_id for method, c in self._claims.items()},
            "inbound": len(self._inbound),
            "outbound": len(self._outbound),
            "postbox": self.postbox.queued,
            "counters": dict(self.counters),
            "dropped": dict(self.postbox.dropped),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._sweep)
                nursery.start_soon(self._expire_calls)
                task_status.started()
                await self.postbox.drain()
        finally:
            self._nursery = None
            self._stop_calls()
            self._release_claims()

    # -- claims ----------------------------------------------------------------------------

    def register(
        self, client: RpcClient, method: str, streaming: bool | str, *, if_unclaimed: bool = False
    ) -> str | None:
        """Claim `method` for `client` (`streaming`: True, False or "binary"); returns the
        client id it displaced, if any (a connection that is gone is not displaced: its claim
        was released). A table full of claims of connections that are gone has room.
        `if_unclaimed` (a claim restored, not a new one): OpError conflict, naming the holder
        as `holder`, when another connection owns it, which keeps it."""
        held = self._live_claim(method)
        if if_unclaimed and held is not None and held.owner is not client:
            holder = held.owner.client_id
            message = f"{method!r} is claimed by {holder}"
            raise OpError(ErrorCode.CONFLICT, message, holder=holder)
        if held is None and self._claims.full_for(method):
            self.release_gone()
        displaced = self._claims.claim(client, method, streaming)
        if displaced is None:
            return None
        by = client.client_id
        lost = {"network": self.network, "method": method, "by": by}
        displaced.push("handler_displaced", lost, reserved=True)  # never skipped for lag
        return displaced.client_id

    def unregister(self, client: RpcClient, method: str) -> bool:
        """Give up `client`'s claim on `method`; False when it held none."""
        return self._claims.release(client, method)

    def binary_owner(self, method: str) -> RpcClient | None:
        """Who serves binary streams of `method` (a claim with `streaming: "binary"`)."""
        claim = self._live_claim(method)
        return claim.owner if claim is not None and claim.streaming == "binary" else None

    def claims_of(self, client: RpcClient) -> list[str]:
        """Methods `client` owns here."""
        return self._claims.methods_of(client)

    def call(
        self, client: RpcClient, peer: str, method: str, payload: Payload, timeout_ms: int
    ) -> Pending[dict[str, Any]]:
        """Call `method` on `peer`; the call frame leaves now when that takes no wait. The
        answer (`payload` or `payload_b64`, or OpError with the failure's code) settles the
        returned Pending in core's task; a waiter that gives up has core cancel the call (if
        core's inbox is full then, the call ends at its deadline)."""
        call = self._open_call(client, peer, stream=False, timeout_ms=timeout_ms)
        abandon = functools.partial(self._abandon, call, "cancelled")
        # not Pending[...](): calling a subscripted generic costs ~3 µs (it tags the instance)
        answer: Pending[dict[str, Any]] = Pending(lambda: _told(self.tell(abandon)))
        call.answer = answer
        frame = self._call_frame(call, method, payload, timeout_ms)
        try:
            sent = self.wire.send_nowait(peer, frame)
        except BaseException:
            self._forget_outbound(call)
            raise
        if not sent:
            assert self._nursery is not None  # _open_call checked
            fail = functools.partial(self._finish, call)
            self._nursery.start_soon(self._send_later, peer, frame, fail, None)
        return answer

    async def _send_later(
        self,
        peer: str,
        frame: Frame,
        fail: Callable[[OpError], None],
        sent: Pending[dict[str, Any]] | None,
    ) -> None:
        """Send a frame that had to wait; then settle `sent`, or `fail` with why it could not
        go."""
        try:
            await self.wire.send(peer, frame)
        except OpError as error:
            fail(error)
        else:
            if sent is not None:
                sent.resolve({})

    async def call_stream(
        self, client: RpcClient, peer: str, method: str, payload: Payload, timeout_ms: int
    ) -> str:
        """Start a streamed call; its chunks and end reach `client` as events. Returns its id."""
        call = self._open_call(client, peer, stream=True, timeout_ms=timeout_ms)
        await self._send_call(call, self._call_frame(call, method, payload, timeout_ms))
        return call.id

    def has_outbound(self, request_id: str) -> bool:
        """Whether a call made from here has this id."""
        return request_id in self._outbound

    def cancel(self, client: RpcClient, request_id: str) -> None:
        """Stop `client`'s call and tell the serving side (OpError unknown_request)."""
        call = self._outbound.get(request_id)
        if call is None or call.client is not client:
            raise _unknown(request_id)
        self._finish(call, OpError(ErrorCode.CANCELLED, "the call was cancelled"))
        self.postbox.post(call.peer, RpcCancel(call.id, "cancelled"))

    def _open_call(
        self,
        client: RpcClient,
        peer: str,
        *,
        stream: bool,
        timeout_ms: int,
    ) -> Outbound:
        if self._nursery is None:
            raise OpError(ErrorCode.UNAVAILABLE, f"rpc of {self.network} is not running")
        if len(self._outbound) >= MAX_OUTBOUND_CALLS:
            raise OpError(ErrorCode.CONFLICT, f"at most {MAX_OUTBOUND_CALLS} calls in flight")
        deadline = trio.current_time() + timeout_ms / 1000
        call = Outbound(new_request_id(), peer, client, stream, deadline)
        self._outbound[call.id] = call
        self._expire_at(deadline, call.id)
        return call

    def _call_frame(
        self, call: Outbound, method: str, payload: Payload, timeout_ms: int
    ) -> RpcCall:
        """The frame that makes `call` on its peer (counted as a call made)."""
        self.counters["calls_out"] += 1
        return RpcCall(call.id, method, payload.value, payload.binary, call.stream, timeout_ms)

    async def _send_call(self, call: Outbound, frame: RpcCall) -> None:
        """Send the call frame; if it cannot go, the call is forgotten without a cancel."""
        try:
            await self.wire.send(call.peer, frame)
        except BaseException:
            self._forget_outbound(call)
            raise

    def _forget_outbound(self, call: Outbound) -> None:
        """Mark a call finished and forget it, telling no one (its frame failed to go, or
        `_finish` delivers its outcome)."""
        call.finished = True
        self._outbound.pop(call.id, None)

    def _expire_at(self, deadline: float, call_id: str) -> None:
        """Have the expirer time the call out at `deadline` unless it finished before."""
        calls = self._outbound
        live = functools.partial(_deadlines_of, calls)
        self._deadlines.add(deadline, call_id, len(calls), live)
        if self._expiry is not None and deadline < self._expiry.deadline:
            self._expiry.deadline = deadline

    async def _expire_calls(self) -> None:
        """Time out calls made from here at their deadlines: one task for all of them."""
        while True:
            with trio.CancelScope(deadline=self._deadlines.next_deadline()) as self._expiry:
                await trio.sleep_forever()
            for call_id in self._deadlines.due(trio.current_time()):
                call = self._outbound.get(call_id)
                if call is not None:
                    self._abandon(call, "timeout")

    def _abandon(self, call: Outbound, reason: str) -> None:
        """End a call we stop waiting for, and tell the serving side."""
        if call.finished:
            return
        message = "no answer before the deadline" if reason == "timeout" else "cancelled"
        self._finish(call, OpError(ErrorCode(reason), message))
        self.postbox.post(call.peer, RpcCancel(call.id, reason))

    def _finish(self, call: Outbound, outcome: Payload | OpError | None) -> None:
        """Deliver a call's outcome (None: a stream ended well) and forget it."""
        if call.finished:
            return
        self._forget_outbound(call)
        if call.answer is not None:
            if isinstance(outcome, OpError):
                call.answer.fail(outcome)
            else:
                call.answer.resolve((outcome if outcome is not None else Payload()).fields())
            return
        end: dict[str, Any] = {"network": self.network, "request_id": call.id}
        if isinstance(outcome, OpError):
            end["error"] = outcome.to_wire()
        # never skipped for lag (the caller waits on it), even when its last chunk just was
        call.client.push("rpc_call_stream_end", end, reserved=True)

    def _caller_side(self, sender: str, request_id: str, *, stream: bool) -> Outbound | None:
        call = self._outbound.get(request_id)
        if call is None or call.peer != sender or call.stream is not stream:
            self.counters["stray_answers"] += 1
            return None
        return call

    def _on_result(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, RpcResult)
        call = self._caller_side(sender, frame.id, stream=False)
        if call is not None:
            outcome = payload_of_frame(frame) if frame.error is None else _error(frame.error)
            self._finish(call, outcome)

    def _on_chunk(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, RpcChunk)
        call = self._caller_side(sender, frame.id, stream=True)
        if call is None:
            return
        data = {"network": self.network, "request_id": call.id, **payload_of_frame(frame).fields()}
        if not call.client.push("rpc_call_stream_chunk", data):
            self._abandon_lagged(call)
            return
        call.unacknowledged += 1
        if call.unacknowledged >= STREAM_WINDOW // 2:
            self.postbox.post(call.peer, RpcCredit(call.id, call.unacknowledged))
            call.unacknowledged = 0

    def _abandon_lagged(self, call: Outbound) -> None:
        self._finish(call, OpError(ErrorCode.LAGGED, "the connection fell behind the stream"))
        self.postbox.post(call.peer, RpcCancel(call.id, "lagged"))

    def _on_end(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, RpcEnd)
        call = self._caller_side(sender, frame.id, stream=True)
        if call is not None:
            self._finish(call, None if frame.error is None else _error(frame.error))

    # -- serving ---------------------------------------------------------------------------

    def _on_call(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, RpcCall)
        self.counters["calls_in"] += 1
        claim = self._live_claim(frame.method)
        refusal = self._refusal(sender, frame, claim)
        if refusal is not None:
            self._answer_error(sender, frame.id, frame.stream, refusal)
            return
        assert claim is not None and self._nursery is not None
        timeout_ms = min(max(frame.timeout_ms, 1), MAX_TIMEOUT_MS)  # the deadline we apply
        forget_at = trio.current_time() + timeout_ms / 1000 + SERVE_GRACE
        flow = StreamFlow() if frame.stream else None
        call = InboundCall(new_request_id(), sender, frame.id, claim.owner, forget_at, flow)
        event = {
            "network": self.network,
            "from": sender,
            "request_id": call.id,
            "method": frame.method,
            "streaming": frame.stream,
            "timeout_ms": timeout_ms,
            **payload_of_frame(frame).fields(),
        }
        if not claim.owner.push("rpc_inbound", event):
            message = "the serving program is not keeping up"
            self._answer_error(sender, frame.id, frame.stream, WireError("remote_error", message))
            return
        self._inbound.add(call)
        if flow is not None:
            self._nursery.start_soon(self._send_stream, call)

    def _refusal(
        self, sender: str, frame: RpcCall, claim: Claim[RpcClient] | None
    ) -> WireError | None:
        method, on = frame.method, self.wire.own_name
        if claim is None:
            return WireError("no_handler", f"no one serves {method!r} on {on}")
        if claim.streaming == "binary":
            how = "open a stream of it (meshactors stream send)"
            return WireError("no_handler", f"{method!r} is served as binary streams on {on}: {how}")
        if claim.streaming is not frame.stream:
            what, how = (
                ("a streaming method", "call it as a stream (meshactors rpc call --stream)")
                if claim.streaming
                else ("not a streaming method", "call it once (meshactors rpc call, no --stream)")
            )
            return WireError("no_handler", f"{method!r} is {what} on {on}: {how}")
        if self._inbound.from_caller(sender, frame.id) is not None:
            return WireError("remote_error", "that request id is already in flight")
        if len(self._inbound) >= MAX_INBOUND_CALLS or self._nursery is None:
            return WireError("remote_error", "busy: too many calls in flight")
        return None

    def _answer_error(self, caller: str, remote_id: str, stream: bool, error: WireError) -> None:
        frame: Frame = RpcEnd(remote_id, error) if stream else RpcResult(remote_id, error=error)
        self.postbox.post(caller, frame)

    async def _sweep(self) -> None:
        """Forget served calls whose caller gave up long ago (its cancel never came)."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            now = trio.current_time()
            for call in [c for c in self._inbound.calls() if c.forget_at <= now]:
                self._drop_inbound(call, "timeout")
            self.release_gone()

    def _drop_inbound(self, call: InboundCall, reason: str) -> None:
        """Forget a served call the caller no longer waits for, and tell its connection."""
        self._forget_inbound(call)
        call.cancelled = reason
        ended = {"network": self.network, "request_id": call.id, "reason": reason}
        call.client.push("rpc_cancelled", ended, reserved=True)  # never skipped for lag

    def _forget_inbound(self, call: InboundCall) -> None:
        self._inbound.forget(call)
        if call.flow is not None:
            call.flow.wake()

    def _on_cancel(self, sender: str, frame: Frame) -> None:
        """A caller gave up one of its calls served here; one for no such call is counted."""
        assert isinstance(frame, RpcCancel)
        call = self._inbound.from_caller(sender, frame.id)
        if call is None:
            self.counters["stray_cancels"] += 1
            return
        self._drop_inbound(call, frame.reason[:64])

    def _on_credit(self, sender: str, frame: Frame) -> None:
        """A caller took chunks of a stream served here; one for no such stream is counted."""
        assert isinstance(frame, RpcCredit)
        call = self._inbound.from_caller(sender, frame.id)
        if call is None or call.flow is None:
            self.counters["stray_credits"] += 1
            return
        call.flow.grant(frame.n)

    def has_inbound(self, request_id: str) -> bool:
        """Whether a call served here has this id."""
        return request_id in self._inbound

    def _serving(self, client: RpcClient, request_id: str, *, stream: bool) -> InboundCall:
        call = self._inbound.get(request_id)
        if call is None or call.client is not client:
            raise _unknown(request_id)
        if call.stream is not stream:
            ops = "rpc_stream_chunk/rpc_stream_end" if call.stream else "rpc_respond"
            raise OpError(ErrorCode.INVALID_PARAMS, f"answer call {request_id} with {ops}")
        return call

    def respond(
        self, client: RpcClient, request_id: str, answer: Payload | str
    ) -> Pending[dict[str, Any]]:
        """Answer a served call with a payload, or with an error message (str). The answer
        leaves now when that takes no wait (the Pending is settled already), else from a task
        (settled once it left, or with the OpError that kept it from leaving)."""
        call = self._serving(client, request_id, stream=False)
        if isinstance(answer, str):
            frame = RpcResult(call.remote_id, error=WireError("remote_error", answer or "error"))
        else:
            frame = RpcResult(call.remote_id, answer.value, answer.binary)
        self._forget_inbound(call)  # once the answer is made: a bad one leaves the call open
        sent: Pending[dict[str, Any]] = Pending()
        if self.wire.send_nowait(call.caller, frame):
            sent.resolve({})
        elif self._nursery is None:
            raise OpError(ErrorCode.UNAVAILABLE, f"rpc of {self.network} is not running")
        else:
            self._nursery.start_soon(self._send_later, call.caller, frame, sent.fail, sent)
        return sent

    def queue_chunk(
        self, client: RpcClient, request_id: str, payload: Payload
    ) -> Pending[dict[str, Any]]:
        """Queue one chunk of a streamed answer; the Pending settles once it left, which waits
        while the caller has no credit left."""
        call = self._serving(client, request_id, stream=True)
        self._check_open(call)
        return self._queue_out(call, RpcChunk(call.remote_id, payload.value, payload.binary))

    def queue_end(
        self, client: RpcClient, request_id: str, error: str | None
    ) -> Pending[dict[str, Any]]:
        """Queue the end of a streamed answer (after every chunk queued so far), with an error
        if it failed; the Pending settles once it left."""
        call = self._serving(client, request_id, stream=True)
        self._check_open(call)
        wire_error = None if error is None else WireError("remote_error", error or "error")
        _flow_of(call).ended = True
        return self._queue_out(call, RpcEnd(call.remote_id, wire_error))

    def _queue_out(self, call: InboundCall, frame: RpcChunk | RpcEnd) -> Pending[dict[str, Any]]:
        sent: Pending[dict[str, Any]] = Pending()
        flow = _flow_of(call)
        flow.queued.append((frame, sent))
        flow.wake()
        return sent

    async def _send_stream(self, call: InboundCall) -> None:
        """A streamed call's sender, a task of core: sends its queued chunks as credit allows,
        then its end; once the call ends otherwise, what is still queued fails with why."""
        flow = _flow_of(call)
        while self._inbound.get(call.id) is call:
            if not flow.ready():
                await flow.changed.wait()
                continue
            frame, sent = flow.queued.popleft()
            if isinstance(frame, RpcEnd):
                self._forget_inbound(call)
            else:
                flow.credit -= 1
            try:
                await self.wire.send(call.caller, frame)
            except OpError as failed:
                sent.fail(failed)
            else:
                sent.resolve({})
        while flow.queued:
            flow.queued.popleft()[1].fail(self._closed(call))

    def _check_open(self, call: InboundCall) -> None:
        """OpError cancelled (the caller ended it) or unknown_request (it finished, or its end
        is queued)."""
        if call.cancelled is not None or self._inbound.get(call.id) is not call:
            raise self._closed(call)
        if call.flow is not None and call.flow.ended:
            raise _unknown(call.id)

    def _closed(self, call: InboundCall) -> OpError:
        """Why a served call takes no more: the caller ended it, or it finished."""
        if call.cancelled is not None:
            return OpError(ErrorCode.CANCELLED, f"the caller ended the call ({call.cancelled})")
        return _unknown(call.id)

    # -- connections and peers going away -------------------------------------------------

    def client_gone(self, client: RpcClient) -> None:
        """Release a closed connection's claims, fail its served calls, cancel its calls."""
        self._release(lambda owner: owner is client)

    def release_gone(self) -> None:
        """Release what connections that are gone still hold here, as `client_gone` does: their
        close's own release was cut off or never came (a flood of closes outran its deadline).
        Counted as `orphans_released` (claims and calls)."""
        released = self._release(lambda owner: owner.gone)
        if released:
            self.counters["orphans_released"] += released

    def _live_claim(self, method: str) -> Claim[RpcClient] | None:
        """The claim on `method`, unless its connection is gone: then what every gone
        connection left is released first, and `method` has no claim."""
        claim = self._claims.get(method)
        if claim is not None and claim.owner.gone:
            self.release_gone()
            return None
        return claim

    def _release(self, which: Callable[[RpcClient], bool]) -> int:
        """Release the claims of the connections `which` picks, fail the calls they serve (the
        callers hear `handler_gone`), cancel the calls they made; returns how many of those
        there were."""
        methods = self._claims.drop_owners(which)
        gone = WireError("handler_gone", "the serving program disconnected mid-call")
        served = [c for c in self._inbound.calls() if which(c.client)]
        for call in served:
            self._forget_inbound(call)
            call.cancelled = "handler_gone"
            self._answer_error(call.caller, call.remote_id, call.stream, gone)
        made = [c for c in self._outbound.values() if which(c.client)]
        for outbound in made:
            self._abandon(outbound, "cancelled")
        return len(methods) + len(served) + len(made)

    def on_peer_status(self, device_id: str, status: PeerStatus) -> None:
        """A peer that stops being active ends the calls to and from it at once."""
        if status is PeerStatus.ACTIVE:
            return
        left = OpError(ErrorCode.PEER_NOT_ACTIVE, f"peer {device_id} left mid-call")
        for call in [c for c in self._outbound.values() if c.peer == device_id]:
            self._finish(call, left)
        for inbound in [c for c in self._inbound.calls() if c.caller == device_id]:
            self._drop_inbound(inbound, "peer_left")

    def _stop_calls(self) -> None:
        """The actor stops: every call made from here fails, served calls are forgotten."""
        stopped = OpError(ErrorCode.UNAVAILABLE, f"rpc of {self.network} stopped")
        for call in list(self._outbound.values()):
            self._finish(call, stopped)
        for inbound in self._inbound.calls():
            self._drop_inbound(inbound, "stopped")

    def _release_claims(self) -> None:
        """The actor stops (network removed, or restarted): owners learn their claims ended."""
        for method, claim in self._claims.clear():
            lost = {"network": self.network, "method": method, "by": None}
            claim.owner.push("handler_displaced", lost, reserved=True)  # never skipped for lag


def _deadlines_of(calls: dict[str, Outbound]) -> list[tuple[float, str]]:
    """The (deadline, id) of the calls made from here still in flight."""
    return [(call.deadline, call.id) for call in calls.values()]


def _flow_of(call: InboundCall) -> StreamFlow:
    """The credit of a call `_serving` found streamed."""
    assert call.flow is not None
    return call.flow


def _told(_sent: bool) -> None:
    """Ignore whether core took a message nobody waits for (`Pending`'s abandon returns None)."""


def _error(error: WireError) -> OpError:
    return OpError(ErrorCode(error.known_code), error.message)


def _unknown(request_id: str) -> OpError:
    return OpError(
        ErrorCode.UNKNOWN_REQUEST,
        f"no call {request_id[:64]!r} in flight on this connection (finished, cancelled, "
        "timed out or never made)",
    )
