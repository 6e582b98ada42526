"""Outbound streaming calls: route `rpc_call_stream_chunk`/`_end` events to the caller's
iterator by request id, including chunks that arrive before `rpc_call_stream`'s answer."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from meshactors.client._ops import RPC_DEADLINE_MARGIN, received
from meshactors.client.errors import ClientError, DeadlineExceeded
from meshactors.network.rpc import DEFAULT_TIMEOUT_MS

STREAM_BUFFER = 1024  # chunks received but not yet read; past it the stream fails as lagged
EARLY_FRAMES = 1024  # stream events held while their call's answer is still on its way
# streams left before their end whose late events are still told apart (and dropped) until
# their deadline; past it the one left longest ago is forgotten
LEFT_STREAMS = 4096


def stream_allowed(timeout_ms: int | None) -> float:
    """Seconds a streamed call with this `timeout_ms` may last as the client counts it: the
    daemon's whole-stream deadline and the margin an rpc_call waits past it."""
    return (DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms) / 1000 + RPC_DEADLINE_MARGIN


@attrs.define(eq=False)
class RpcStream:
    """The chunks of one streamed answer (a binary chunk as bytes); iteration ends at the end
    event or raises its error, or DeadlineExceeded past `deadline` (a daemon gone quiet)."""

    request_id: str
    deadline: float  # trio time: the daemon's whole-stream deadline and a margin
    allowed: float  # seconds from the call to `deadline`, for DeadlineExceeded to say
    # the daemon ended the call (its end event) or lost it with our connection: nothing to
    # cancel; a stream that only ended here (lagged, bad_payload, its caller left) is cancelled
    daemon_done: bool = False
    _failure: ClientError | None = None
    _send: trio.MemorySendChannel[Any] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Any](STREAM_BUFFER)

    def __aiter__(self) -> RpcStream:
        return self

    async def __anext__(self) -> Any:
        try:
            with trio.move_on_at(self.deadline):
                return await self._receive.receive()
            self._end(DeadlineExceeded("rpc_call_stream", self.allowed))  # its end never came
            return await self._receive.receive()  # the chunks already here, then the failure
        except trio.EndOfChannel:
            if self._failure is not None:
                raise self._failure from None
            raise StopAsyncIteration from None

    def _deliver(self, frame: dict[str, Any]) -> None:
        if frame["kind"] == "rpc_call_stream_end":
            self.daemon_done = True
            if (error := frame.get("error")) is not None:
                self._end(_remote_error(error))
            else:
                self._end(None)
            return
        try:
            self._send.send_nowait(received(frame))
        except (TypeError, ValueError) as bad:  # only a peer can send one
            self._end(ClientError("bad_payload", f"a binary chunk not base64: {bad}"))
        except trio.WouldBlock:
            self._end(ClientError("lagged", f"more than {STREAM_BUFFER} chunks went unread"))
        except trio.ClosedResourceError:
            pass  # already ended (lagged); later chunks are dropped

    def _end(self, failure: ClientError | None) -> None:
        if self._failure is None:
            self._failure = failure
        self._send.close()


def _remote_error(error: Any) -> ClientError:
    if isinstance(error, dict):
        return ClientError(str(error.get("code", "remote_error")), str(error.get("message")))
    return ClientError("remote_error", str(error))


@attrs.define(eq=False)
class StreamTable:
    """Open stream calls by request id, and early events for calls still being answered."""

    opening: int = 0  # rpc_call_stream requests whose answer has not been handled yet
    streams: dict[str, RpcStream] = attrs.field(factory=dict)
    # streams their callers left (or calls given up before their answer opened them) before
    # the daemon ended them, each until its deadline (trio time): their events, up to their
    # end, are dropped, never held as another stream's early ones, however their cancel
    # ended (answered ok, failed, or no answer: the daemon may still send some)
    _left: dict[str, float] = attrs.field(factory=dict)
    _early: list[dict[str, Any]] = attrs.field(factory=list)
    # events were dropped while streams were opening: each one opened until none is fails so
    _opening_lagged: ClientError | None = None

    def deliver(self, frame: dict[str, Any]) -> None:
        """Route one stream event; never waits."""
        request_id = frame.get("request_id")
        if request_id in self._left:
            if frame["kind"] == "rpc_call_stream_end":
                del self._left[request_id]
            return
        stream = self.streams.get(request_id)  # type: ignore[arg-type]
        if stream is not None:
            stream._deliver(frame)
            if frame["kind"] == "rpc_call_stream_end":
                del self.streams[stream.request_id]
        elif self.opening and self._opening_lagged is None:
            if len(self._early) < EARLY_FRAMES:
                self._early.append(frame)
            else:  # a chunk or end of a stream being opened would be lost: they fail instead
                early = f"more than {EARLY_FRAMES} stream events came before their call's answer"
                self._opening_lost(ClientError("lagged", early))

    def open(self, request_id: str, deadline: float, allowed: float) -> RpcStream:
        """The stream for a call just answered, with whatever of it arrived first; it fails
        past `deadline`, `allowed` seconds after the call began."""
        stream = self.streams[request_id] = RpcStream(request_id, deadline, allowed)
        early, self._early = self._early, []
        for frame in early:
            self.deliver(frame)
        if self._opening_lagged is not None:
            stream._end(self._opening_lagged)
        return stream

    def done_opening(self) -> None:
        """One rpc_call_stream answer was handled (or failed)."""
        self.opening -= 1
        if not self.opening:
            self._early.clear()
            self._opening_lagged = None

    def lagged(self, failure: ClientError) -> None:
        """Events of the connection were dropped before they were routed: any stream may have
        lost chunks or its end there, so every open one ends with `failure` after the chunks
        it got (leaving its block cancels it at the daemon), and so does every one opened
        until none is being opened (its first events may be among those dropped)."""
        for stream in self.streams.values():
            stream._end(failure)
        if self.opening:
            self._opening_lost(failure)

    def _opening_lost(self, failure: ClientError) -> None:
        """Events of streams being opened were lost: each one opened until none is fails so."""
        self._opening_lagged = failure
        self._early.clear()

    def forget(self, stream: RpcStream) -> None:
        """Stop routing to a stream its caller left; what the daemon still sends of it, up to
        its end or its deadline, is dropped."""
        self.streams.pop(stream.request_id, None)
        if not stream.daemon_done:
            self._leave(stream.request_id, stream.deadline)
        stream._end(None)

    def leave(self, request_id: str, timeout_ms: int | None) -> None:
        """A call given up before its answer opened stream `request_id` (asked with
        `timeout_ms`), now being cancelled: its events held or still to come, up to its end or
        its deadline, are dropped."""
        held = [frame for frame in self._early if frame.get("request_id") == request_id]
        self._early = [frame for frame in self._early if frame.get("request_id") != request_id]
        if all(frame["kind"] != "rpc_call_stream_end" for frame in held):
            self._leave(request_id, trio.current_time() + stream_allowed(timeout_ms))

    def _leave(self, request_id: str, deadline: float) -> None:
        """Drop the events of stream `request_id` until its end, or `deadline` (trio time):
        past it the daemon has ended it (or lost it, when a core restart lost the call, or the
        end itself was among events dropped) and sends nothing more of it. At most
        LEFT_STREAMS are kept, the one left longest ago going first."""
        now = trio.current_time()
        self._left = {left: until for left, until in self._left.items() if until > now}
        if len(self._left) >= LEFT_STREAMS:
            del self._left[next(iter(self._left))]
        self._left[request_id] = deadline

    def fail_all(self, failure: ClientError) -> None:
        """End every open stream with `failure` (the connection carrying them is gone, and the
        daemon cancels a gone connection's calls itself)."""
        for stream in self.streams.values():
            stream.daemon_done = True
            stream._end(failure)
        self.streams.clear()
        self._left.clear()
