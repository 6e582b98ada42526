"""A client connection as op handlers see it: its id, pushed events, and close-time cleanups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import structlog
import trio

from meshactors.actors import Sequencer, Subscriber
from meshactors.daemon.services import Services
from meshactors.network.stream_pipe import Pipe
from meshactors.store.events import Event
from meshactors.wire.ipc import ErrorCode, OpError, RequestId, encode, encoded_size_floor

if TYPE_CHECKING:
    from meshactors.control.event_stream import HubSubscription

Cleanup = Callable[[], Awaitable[None]]
# an event line, encoded by whoever pushed it so the queue knows its size, and the channel
# subscription it belongs to (None: none)
Push = tuple["ChannelSubscription | None", bytes]
T = TypeVar("T")

log = structlog.get_logger("meshactors.client")


class EventSink(Protocol):
    """Where a session's broadcast events are written: its connection's outgoing queue."""

    async def send_event(self, event: Event) -> None:
        """Write one logged event."""

    async def send_frame(self, kind: str, data: dict[str, Any]) -> None:
        """Write one unlogged event frame."""


@attrs.frozen
class CutOff:
    """How many of a closed connection's cleanups ran out of time: the one message its close
    tells `control`, which counts them (no client node outlives its close to show them)."""

    client_id: str
    cleanups: int


@attrs.define(eq=False)
class Session:
    """Per-connection state owned by one `client` actor and lent to its op handlers."""

    client_id: str
    services: Services
    pushes: Subscriber[Push]  # where pushed events wait for the connection's forwarder
    nursery: trio.Nursery
    sink: EventSink
    events_subscribed: bool = False  # claimed by events_subscribe, or an SSE stream's
    event_stream: HubSubscription | None = None  # once subscribed to the event hub
    receives_pushes: bool = True  # False on HTTP: pushed events have nowhere to go
    pipe: Pipe | None = None  # set by stream_open/_accept: the connection is a binary stream
    turns: Sequencer[Hashable] = attrs.field(factory=Sequencer)  # `Op.ordered_by` requests
    _cleanups: list[Cleanup] = attrs.field(factory=list)
    _cleanup_keys: set[str] = attrs.field(factory=set)
    _cancellable: dict[RequestId, trio.CancelScope] = attrs.field(factory=dict)

    def push(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        reserved: bool = False,
        reader: ChannelSubscription | None = None,
    ) -> bool:
        """Queue an event addressed to this connection only; never waits (lags when full). It
        is encoded here, in the pusher's task, so the queue counts its real bytes, but only
        when it may fit: one the queue skips even at its least size is not encoded at all.
        `reserved`: an end the program waits on (of a call it made or serves, or of a claim),
        queued even when full, in the queue's reserve (PUSH_END_RESERVE); with that taken too,
        the connection is cut off, so the program learns all ended rather than wait for one.
        `reader`: the channel subscription the event belongs to."""
        frame = {"kind": kind, **data}
        least = encoded_size_floor(frame)
        return self.pushes.offer_made(partial(_made, reader, frame), least, reserved=reserved)

    def check_cancellable(self, request_id: RequestId) -> None:
        """OpError conflict, before a cancellable request starts, when this connection has one
        of the same id in flight: `rpc_cancel{call}` could then reach only one of them."""
        if request_id in self._cancellable:
            message = f"request id {request_id!r:.64} is already in flight: give each its own"
            raise OpError(ErrorCode.CONFLICT, message)

    def cancellable(self, request_id: RequestId, work: Awaitable[T]) -> Awaitable[T]:
        """`work` of this connection's request `request_id` (see `check_cancellable`), run so
        that `cancel_request` can stop it: the request then fails with `cancelled`."""
        scope = self._cancellable[request_id] = trio.CancelScope()
        return self._run_cancellable(request_id, scope, work)

    async def _run_cancellable(
        self, request_id: RequestId, scope: trio.CancelScope, work: Awaitable[T]
    ) -> T:
        """`work`'s result, or `cancelled` once `scope` was cancelled before it finished."""
        try:
            with scope:
                return await work
            raise OpError(ErrorCode.CANCELLED, "the call was cancelled")
        finally:
            if self._cancellable.get(request_id) is scope:
                del self._cancellable[request_id]

    def cancel_request(self, request_id: RequestId) -> bool:
        """Stop the `cancellable` work of this connection's request `request_id`; False when
        none is in flight."""
        scope = self._cancellable.get(request_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    @property
    def gone(self) -> bool:
        """Whether the connection ended (`close` began): what core still holds for it (claims,
        calls, subscriptions) counts as released, should the cleanup asking core be cut off."""
        return self.pushes.left

    def on_close(self, cleanup: Cleanup) -> None:
        """Run `cleanup` when the connection ends (see `close`)."""
        self._cleanups.append(cleanup)

    def on_close_once(self, key: str, cleanup: Cleanup) -> None:
        """`on_close`, unless a cleanup under `key` is registered already."""
        if key not in self._cleanup_keys:
            self._cleanup_keys.add(key)
            self.on_close(cleanup)

    async def close(self, cut_offs: trio.MemorySendChannel[CutOff]) -> None:
        """Run every registered cleanup (leaving none behind), all at once: one that fails is
        logged, and one that hangs (an actor it asks does not answer) is cut off alone by the
        caller's deadline, so neither keeps the others from releasing what they hold. The push
        queue is closed first: from then on the session is `gone`, and every actor that holds
        something for it drops that when it next looks, whether or not its cleanup arrives
        (so cleanups cut off are only counted: one CutOff on `cut_offs`, control's, tells how
        many, without waiting; see `_report_cut_off`)."""
        self.pushes.close()
        cleanups, self._cleanups = self._cleanups, []
        cut: list[Cleanup] = []  # the cleanups cut off, as their tasks (this close's) find
        try:
            async with trio.open_nursery() as nursery:
                for cleanup in cleanups:
                    nursery.start_soon(_run_cleanup, cleanup, self.client_id, cut)
        finally:
            if cut:
                _report_cut_off(cut_offs, CutOff(self.client_id, len(cut)))


@attrs.define(eq=False)
class ChannelSubscription:
    """One channel subscription of a connection, as its channel's pump and the network's core
    push to it. Its event lines wait in the connection's push queue tagged with it, so once its
    unsubscribe ended it (`end`) the connection's forwarder drops those still queued, and any
    the pump pushes before it hears of the leave: nothing of the subscription is written after
    the unsubscribe's answer."""

    session: Session
    ended: bool = False  # set and read only in the connection's own tasks

    @property
    def client_id(self) -> str:
        """The connection's id: a connection reads a channel once."""
        return self.session.client_id

    @property
    def gone(self) -> bool:
        """Whether the connection ended: the subscription counts as ended."""
        return self.session.gone

    def push(self, kind: str, data: dict[str, Any], *, reserved: bool = False) -> bool:
        """`Session.push` of an event of this subscription."""
        return self.session.push(kind, data, reserved=reserved, reader=self)

    def push_frames(self, frames: list[bytes]) -> int:
        """Queue encoded event lines, in order, without waiting; returns how many were taken
        (each one that was not counts as skipped, as with `push`)."""
        return sum(self.session.pushes.offer((self, frame)) for frame in frames)

    def end(self) -> None:
        """The subscription ended, its unsubscribe about to be answered (called in the
        connection's task): what is still queued of it is dropped."""
        self.ended = True


def push_size(push: Push) -> int:
    """The bytes of a queued event line, as the push queue counts them."""
    return len(push[1])


def _made(reader: ChannelSubscription | None, frame: dict[str, Any]) -> Push:
    """`frame` encoded, queued as `reader`'s."""
    return reader, encode(frame)


def _report_cut_off(cut_offs: trio.MemorySendChannel[CutOff], report: CutOff) -> None:
    """Tell control `report` without waiting (a close runs past its deadline already): a
    channel found full (it is sized never to be: CUT_OFF_REPORTS) drops it, logged at debug."""
    try:
        cut_offs.send_nowait(report)
    except trio.WouldBlock:
        log.debug(
            "cleanup cut off, not counted: control is behind",
            client=report.client_id,
            cleanups=report.cleanups,
        )


async def _run_cleanup(cleanup: Cleanup, client_id: str, cut: list[Cleanup]) -> None:
    """Run one of a closed connection's cleanups, logging how it failed, or adding it to `cut`
    when it was cut off."""
    try:
        await cleanup()
    except Exception:
        log.exception("cleanup failed", client=client_id)
    except trio.Cancelled:
        cut.append(cleanup)
        raise
