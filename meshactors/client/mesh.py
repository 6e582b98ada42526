"""`MeshClient`: the trio-native client. Typed ops, the event stream, serving methods and
subscribing to channels, over a connection that survives daemon restarts by itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import trio

from meshactors.actors import Broadcast, Lagged, Subscriber
from meshactors.client._conn import STREAM_LEFT
from meshactors.client._frames import events_told, lagged_channel
from meshactors.client._ops import Data, Ops, params, payload_params, received
from meshactors.client._serving import (
    Handler,
    Serving,
    StreamHandler,
    is_streaming,
    require_async,
)
from meshactors.client._streams import RpcStream, StreamTable, stream_allowed
from meshactors.client.binary import BinaryStream, StreamError, switch
from meshactors.client.errors import ClientClosed, ClientError, ConnectionLost, DeadlineExceeded
from meshactors.client.networks import NetworkSync, converge
from meshactors.client.reconnect import (
    DaemonLink,
    Want,
    WantKind,
    claimed_by_another,
    refusal,
    replay_failed,
)
from meshactors.client.state import RELIST_KINDS, SharedState
from meshactors.exception_groups import one_error_bare
from meshactors.network.rpc import DEFAULT_TIMEOUT_MS
from meshactors.paths import resolve_paths

log = logging.getLogger("meshactors.client")  # the application decides where it goes

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds the first connect retries while the daemon starts
DEFAULT_CALL_TIMEOUT = 60.0  # seconds one op may take, waiting for a reconnect included
EVENT_STREAM_BUFFER = 4096  # events an `events()` reader may leave unread before it lags
CHANNEL_BUFFER = 1024  # messages a `subscribe` reader may leave unread before it lags
RETAINED_PER_CHANNEL = 1024  # retained values kept for a channel's later local readers
RELEASE_TIMEOUT = 5.0  # seconds an unsubscribe, a stream cancel or a served stream's finish
# (after its handler returned) may take on the way out
RELIST_RETRY_FIRST = 0.5  # seconds before `state()` lists the map again after a re-list's deadline
RELIST_RETRY_MAX = 8.0  # the bound of that backoff (doubling from the first)
RESTORE_RETRY_FIRST = 0.5  # seconds before a claim or subscription the daemon ended is put back
# again after a try that failed for a reason that may pass (the connection staying up)
RESTORE_RETRY_MAX = 8.0  # the bound of that backoff (doubling from the first)

BinaryHandler = Callable[[BinaryStream], Awaitable[None]]


@attrs.frozen
class ChannelMessage:
    """One message received on a subscribed channel: a JSON `payload`, or binary `data`."""

    network: str
    peer: str  # the sender's device id
    channel: str
    payload: Any
    retained: bool = False  # the sender's retained value, given at (re-)subscribing, not new
    data: bytes | None = None  # a binary message's bytes (sent as `payload_b64`); payload None


@attrs.frozen
class ChannelGap:
    """Marker among a channel's messages: some may have been lost here, this channel's or not.
    `reason` "lagged": the daemon or the client skipped `skipped` events of the connection,
    or the channel's pump at the daemon `skipped` of this channel's messages (in its readers
    alone); "disconnected": the connection was lost, and what was sent until the
    subscription was restored never arrives (`skipped` None: unknown); "unsubscribed": the
    daemon ended this channel's subscription (its network was removed), and what was sent
    until it is subscribed again never arrives."""

    reason: str
    skipped: int | None = None


ChannelItem = ChannelMessage | ChannelGap


@attrs.define(eq=False)
class ChannelFeed:
    """One subscribed channel's items, fanned out to its local readers."""

    readers: Broadcast[ChannelItem] = attrs.field(factory=Broadcast)
    # by sender: its retained value as the daemon gave it, while no later message could have
    # replaced it (the daemon does not say whether a live message was sent retained)
    retained: dict[str, ChannelMessage] = attrs.field(factory=dict)
    _gap_last: bool = False  # the last item was a gap: a second one would say nothing new
    failure: ClientError | None = None  # why the daemon's subscription ended for good

    def join(self) -> Subscriber[ChannelItem]:
        """A new local reader, given first the retained values the channel's earlier readers
        got, as the daemon gives them to each new subscription."""
        subscriber = ChannelReader(CHANNEL_BUFFER, feed=self)
        self.readers.add(subscriber)
        for message in self.retained.values():
            subscriber.offer(message)
        return subscriber

    def fail(self, failure: ClientError) -> None:
        """The daemon ended the subscription and refused it again: each reader's iteration
        raises `failure` after what is queued for it."""
        self.failure = failure
        self.readers.close()

    def message(self, message: ChannelMessage) -> None:
        """Pass a received message to every reader."""
        self._gap_last = False
        self.retained.pop(message.peer, None)
        if message.retained:
            self.retained[message.peer] = message
            if len(self.retained) > RETAINED_PER_CHANNEL:
                del self.retained[next(iter(self.retained))]
        self.readers.publish(message)

    def gap(self, gap: ChannelGap) -> None:
        """Mark a gap, unless nothing arrived since the last one; a retained value kept may
        have been replaced in it (a reconnect's re-subscribe gives them again)."""
        self.retained.clear()
        if not self._gap_last:
            self._gap_last = True
            self.readers.publish(gap)


@attrs.define(eq=False)
class ChannelReader(Subscriber[ChannelItem]):
    """A `subscribe` reader: its iteration ends when the client closes, or raises the error
    that ended its channel's subscription for good (`ChannelFeed.fail`)."""

    feed: ChannelFeed = attrs.field(kw_only=True)

    async def __anext__(self) -> ChannelItem | Lagged:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            if self.feed.failure is not None:
                raise self.feed.failure from None
            raise StopAsyncIteration from None
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None


@attrs.define(eq=False)
class EventStream:
    """Every frame the daemon sends this client, in order, plus the client's own
    (`client_reconnected`, `client_disconnected`, …); a reader that lags gets `lagged`."""

    _subscriber: Subscriber[dict[str, Any]]

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        item = await self._subscriber.__anext__()
        if isinstance(item, Lagged):
            return {"kind": "lagged", "skipped": item.skipped, "source": "client"}
        return item

    def close(self) -> None:
        """Stop receiving events."""
        self._subscriber.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MeshClient(Ops):
    """A client of the local daemon; use `async with MeshClient() as client:`.

    The client keeps a desired state (served methods, subscribed channels, the event stream
    position) and puts it back by itself whenever it reconnects to a restarted daemon.
    """

    def __init__(
        self,
        socket: Path | str | None = None,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        events_since: int | None = None,
    ) -> None:
        self.socket = Path(socket) if socket is not None else resolve_paths().socket
        self.call_timeout = call_timeout
        self._link = DaemonLink(
            self.socket,
            connect_timeout,
            self._route,
            self._connection_lost,
            self._replay_failed,
            self._restore_soon,
        )
        self._link.desired.last_event_id = events_since
        self._events: Broadcast[dict[str, Any]] = Broadcast()
        self._channels: dict[tuple[str, str], ChannelFeed] = {}
        self._serving = Serving(self)
        self._streams = StreamTable()
        self._binary_handlers: dict[tuple[str, str], BinaryHandler] = {}
        # the wants a `_restore` runs for → whether one was found not in place again since its
        # last try (the daemon ended it, or a reconnect's replay failed it for now)
        self._restoring: dict[Want, bool] = {}
        self._networks_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._exit_stack = contextlib.AsyncExitStack()

    @property
    def last_event_id(self) -> int | None:
        """The newest broadcast event received: persist it to resume with `events_since`."""
        return self._link.desired.last_event_id

    @property
    def reconnects(self) -> int:
        """How many times the client reconnected after losing the daemon."""
        return self._link.reconnects

    async def __aenter__(self) -> MeshClient:
        self._nursery = await self._exit_stack.enter_async_context(trio.open_nursery())
        try:
            await self.start()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        try:
            return bool(await self._exit_stack.__aexit__(exc_type, exc, traceback))
        except BaseExceptionGroup as group:  # the body's own error, re-raised unwrapped
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                raise exc from None
            raise

    def _close(self) -> None:
        """End what other tasks may wait on: calls and streams fail with ClientClosed, channel
        and event readers see their end."""
        self._link.close()
        self._streams.fail_all(ClientClosed())
        for feed in self._channels.values():
            feed.readers.close()
        self._events.close()

    async def start(self) -> None:
        """Connect (retrying while the daemon starts) and put the desired state in place.
        Concurrent and repeated calls share one bring-up; raises DaemonNotRunning."""
        if self._nursery is None:
            raise ClientError("not_entered", "use `async with MeshClient(...)` first")
        await self._link.start(self._nursery)

    async def call(
        self, op: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Data:
        """Run any op with its params and return its data; ClientError carries the code."""
        deadline = self.call_timeout if timeout is None else timeout
        return await self._link.call(op, dict(params or {}), deadline)

    # events
    def events(self) -> EventStream:
        """A new reader of every event from now on (each reader gets its own copy)."""
        if self._link.closed:
            raise ClientClosed()
        return EventStream(self._events.subscribe(EVENT_STREAM_BUFFER, weight=events_told))

    def _route(self, item: dict[str, Any] | Lagged) -> None:
        if isinstance(item, Lagged):  # our own buffer dropped events: maybe a stream's end
            dropped = f"the client dropped {item.skipped} events of its connection"
            self._streams.lagged(ClientError("lagged", dropped))
            item = {"kind": "lagged", "skipped": item.skipped, "source": "client"}
        kind = item.get("kind")
        if kind == STREAM_LEFT:  # the connection's own marker, for the stream table alone
            self._streams.leave(item["request_id"], item["timeout_ms"])
            return
        if kind == "rpc_inbound" and self._nursery is not None:
            self._serving.inbound(item, self._nursery)
        elif kind == "rpc_cancelled":
            self._serving.cancelled(item)
        elif kind == "channel_inbound":
            self._channel_inbound(item)
        elif kind == "stream_incoming" and self._nursery is not None:
            self._nursery.start_soon(self._serve_incoming, item)
        elif kind in ("rpc_call_stream_chunk", "rpc_call_stream_end"):
            self._streams.deliver(item)
        elif kind == "channel_unsubscribed":
            self._unsubscribed(Want(WantKind.CHANNEL, item.get("network"), item.get("channel")))  # type: ignore[arg-type]
        elif kind == "handler_displaced":
            self._displaced(Want(WantKind.CLAIM, item.get("network"), item.get("method")), item)  # type: ignore[arg-type]
        elif kind == "client_disconnected":
            self._streams.fail_all(ConnectionLost("the daemon went away mid-stream"))
        elif kind == "lagged":
            self._lagged(item)
        self._events.publish(item)

    def _connection_lost(self) -> None:
        """A connection is gone, every event it carried routed: what it would have carried
        next, until the subscriptions are restored, never arrives, and the calls it brought
        can no longer be answered."""
        self._serving.connection_lost()
        self._channel_gap(ChannelGap("disconnected"))

    def _displaced(self, want: Want, event: dict[str, Any]) -> None:
        """Our claim ended. Another program's claim (`by` names it) stands: last claim wins, so
        ours is dropped. A restart in the daemon ended it (`by` null): claim it again."""
        if event.get("by") is None and want in self._link.desired.claims:
            self._restore_soon(want)
            return
        self._drop_claim(want)

    def _restore_soon(self, want: Want) -> None:
        """The daemon ended a claim or subscription we still want (a restart, a removed
        network), or a reconnect's replay failed it for a reason that may pass: put it back on
        the current connection, without waiting for another reconnect. One restore runs per
        want: either cause, while it runs, has it put the want back once more."""
        if self._nursery is None:
            return
        self._link.lost(want)
        running = want in self._restoring
        self._restoring[want] = running
        if not running:
            self._nursery.start_soon(self._restore, want)

    async def _restore(self, want: Want) -> None:
        """Put back what `_restore_soon` was given; tell the program by a client event:
        `client_reclaimed` or `client_resubscribed` (want.kind.restored) once it is back, and
        `client_replay_failed` for each try that failed (`_replay_failed`). A sure refusal
        (`refusal`: e.g. the network was removed) ends a channel's readers and gives a claim
        up, its method no longer served. A failure that may pass (UNSURE_CODES: the daemon's
        `timeout` or `unavailable`, our deadline) gives nothing up: it is tried again after a
        doubling backoff (RESTORE_RETRY_FIRST to RESTORE_RETRY_MAX) while its last try (this
        restore's, or the replay's that handed it over) failed on the connection still current
        (`DaemonLink.may_retry`); once that one is lost, the next connection's replay puts it
        back instead. Nothing is told when the program let it go before its turn came, or the
        client closed (readers end as at any close)."""
        delay = RESTORE_RETRY_FIRST
        try:
            while True:
                if self._link.may_retry(want):  # its last try here failed for now: back off
                    await trio.sleep(delay)
                    delay = min(delay * 2, RESTORE_RETRY_MAX)
                    if not self._link.may_retry(want):  # lost meanwhile: the replay took over
                        return
                self._restoring[want] = False
                try:
                    restored = await self._link.ensure(want, self.call_timeout, restoring=True)
                except ClientClosed:
                    return
                except ClientError as error:
                    if want.kind is WantKind.CLAIM and refusal(error):
                        await self._unclaim_after(want, error)
                    self._replay_failed(want, error)
                    if not self._link.may_retry(want):
                        return
                    continue
                if restored and self._restoring[want]:
                    continue  # found not in place again after it was put back: once more
                if restored:
                    self._route({"kind": want.kind.restored} | want.params())
                return
        finally:
            del self._restoring[want]

    def _drop_claim(self, want: Want) -> None:
        """Forget a claim the daemon took away: its handler goes, and it is never replayed."""
        self._forget_handler(want)
        self._link.forget(want)

    async def _claim(self, want: Want, streaming: bool | str) -> None:
        """Claim a method for its handler and keep the claim across reconnects; one the daemon
        refuses is forgotten with its handler (a lost connection replays it instead)."""
        self._link.desired.claims[want] = streaming
        try:
            await self._link.ensure(want, self.call_timeout)
        except ClientError as error:
            if not isinstance(error, ConnectionLost):
                await self._unclaim_after(want, error)
            raise

    async def _unclaim(self, want: Want) -> None:
        """Give up a claim: its handler goes, it is never replayed, and the daemon releases it
        (if it holds it, or may: a claim given up before its answer came may still be made)."""
        self._forget_handler(want)
        self._link.desired.claims.pop(want, None)
        await self._link.release(want, self.call_timeout)

    async def _unclaim_after(self, want: Want, failure: ClientError) -> None:
        """`_unclaim` a claim that failed with `failure`, which is what the caller is told: a
        release that fails too says nothing more."""
        try:
            await self._unclaim(want)
        except ClientError as also:
            log.debug("releasing %s after %s failed too: %s", want.name, failure.code, also)

    def _forget_handler(self, want: Want) -> None:
        """Let go of the handler of a claim, a call or a binary-stream one (`unserve` and a
        dropped claim both end here, so neither kind outlives its claim)."""
        self._serving.handlers.pop((want.network, want.name), None)
        self._binary_handlers.pop((want.network, want.name), None)

    # serving
    async def serve(self, network: str, method: str, handler: Handler | StreamHandler) -> None:
        """Own `method` on `network`: each inbound call runs `handler(payload, ctx)` in its own
        task (a binary call's payload is its bytes); its return value answers (an async
        generator streams chunks; bytes go binary), an exception's message answers as the
        error. The claim is restored after every reconnect. TypeError for a handler not
        defined with `async def`."""
        require_async(handler, streams=True)
        want = Want(WantKind.CLAIM, network, method)
        self._serving.handlers[(network, method)] = handler
        await self._claim(want, is_streaming(handler))

    async def unserve(self, network: str, method: str) -> None:
        """Give up a method served with `serve`."""
        await self._unclaim(Want(WantKind.CLAIM, network, method))

    # binary streams
    async def open_stream(
        self, network: str, peer: str, method: str, *, timeout_ms: int | None = None
    ) -> BinaryStream:
        """A binary stream to `peer`'s program serving `method`, on a connection of its own,
        once that program accepted it (within `timeout_ms`, default 30 s)."""
        stream_params = params(network=network, peer=peer, method=method, timeout_ms=timeout_ms)
        allowed = (DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms) / 1000
        return await switch(self.socket, "stream_open", stream_params, self.call_timeout, allowed)

    async def accept_stream(self, network: str, stream_id: str) -> BinaryStream:
        """Become the serving end of the incoming stream a `stream_incoming` event offered."""
        accept_params = params(network=network, stream_id=stream_id)
        # no bound of its own: the daemon answers once core did (STREAM_DEADLINE_MARGIN covers it)
        return await switch(self.socket, "stream_accept", accept_params, self.call_timeout, 0.0)

    async def serve_stream(self, network: str, method: str, handler: BinaryHandler) -> None:
        """Serve binary streams of `method`: each runs `handler(stream)` in its own task and is
        closed after it: once finished if it sent its end (at most RELEASE_TIMEOUT later), else
        at once, which cancels it; an exception resets it with its message. Restored after
        reconnects; `unserve` ends it. TypeError for a handler not defined with `async def`."""
        require_async(handler, streams=False)
        want = Want(WantKind.CLAIM, network, method)
        self._binary_handlers[(network, method)] = handler
        await self._claim(want, "binary")

    async def _serve_incoming(self, offer: dict[str, Any]) -> None:
        handler = self._binary_handlers.get((offer.get("network"), offer.get("method")))  # type: ignore[arg-type]
        if handler is None:
            return
        try:
            stream = await self.accept_stream(str(offer["network"]), str(offer["stream_id"]))
        except ClientError:
            return  # the opener gave up meanwhile
        async with stream:
            try:
                await handler(stream)
            except Exception as exc:
                gone = (trio.BrokenResourceError, trio.ClosedResourceError)
                with contextlib.suppress(*gone):  # the daemon closed it already: it knows
                    await stream.reset(str(exc) or type(exc).__name__)
            else:
                await _let_finish(stream)

    # channels
    @contextlib.asynccontextmanager
    async def subscribe(self, network: str, channel: str) -> AsyncIterator[Subscriber[ChannelItem]]:
        """Receive a channel's messages for the block: an async iterator of ChannelMessage,
        Lagged markers if the reader falls behind, and ChannelGap markers where messages may
        have been lost before they reached the client; re-subscribed after every reconnect,
        and after the daemon ended the subscription, whose refusal then (`no_such_network`:
        the network was removed) the iteration raises. ClientClosed once the client closed
        (a reader joined then would never see its end)."""
        if self._link.closed:
            raise ClientClosed()
        want = Want(WantKind.CHANNEL, network, channel)
        feed = self._channels.get((network, channel))
        if feed is None or feed.failure is not None:  # none, or one whose readers must go
            feed = self._channels[(network, channel)] = ChannelFeed()
        desired = self._link.desired.channels
        with feed.join() as subscriber:
            desired[want] = desired.get(want, 0) + 1
            try:  # after the ensure or release of the channel in flight, if any
                await self._link.ensure(want, self.call_timeout)
                yield subscriber
            finally:
                desired[want] -= 1
                if not desired[want]:
                    del desired[want]
                    del self._channels[(network, channel)]
                    with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
                        await self._link.release(want, RELEASE_TIMEOUT)

    def _unsubscribed(self, want: Want) -> None:
        """The daemon ended a subscription we hold (its network was removed): mark the gap in
        the channel and subscribe again at once, as a claim a restart ended is claimed again."""
        feed = self._channels.get((want.network, want.name))
        if feed is None or want not in self._link.desired.channels:
            return
        feed.gap(ChannelGap("unsubscribed"))
        self._restore_soon(want)

    def _replay_failed(self, want: Want, error: ClientError) -> None:
        """A want could not be put in place again: tell the program (`client_replay_failed`);
        a subscription the daemon refused for sure (`refusal`: say `no_such_network`, the
        network was removed while we were away) also ends its readers with that refusal, and
        a claim another program made meanwhile stands, so ours is dropped, as if displaced. One
        a replay failed for a reason that may pass, the link hands to `_restore_soon` too."""
        feed = self._channels.get((want.network, want.name))
        if want.kind is WantKind.CHANNEL and feed is not None and refusal(error):
            feed.fail(error)
        if want.kind is WantKind.CLAIM and claimed_by_another(error):
            self._drop_claim(want)
        self._route(replay_failed(want, error))

    def _channel_inbound(self, frame: dict[str, Any]) -> None:
        feed = self._channels.get((frame.get("network"), frame.get("channel")))  # type: ignore[arg-type]
        if feed is None:
            return
        network, sender, channel = frame.get("network", ""), frame.get("from", ""), frame["channel"]
        try:
            contents = _contents(frame)
        except (TypeError, ValueError) as bad:  # e.g. a peer's binary payload, not base64
            log.warning("message on %s from %s dropped: %s", channel, sender, bad)
            return
        retained = frame.get("retained") is True
        for payload, data in contents:
            feed.message(ChannelMessage(network, sender, channel, payload, retained, data))

    def _lagged(self, notice: dict[str, Any]) -> None:
        """Mark a `lagged` notice's gap: a channel pump's in its channel alone (if subscribed
        here); the connection's in every channel, as it cannot say whose events were
        skipped."""
        gap = ChannelGap("lagged", notice.get("skipped"))
        channel = lagged_channel(notice)
        if channel is None:
            self._channel_gap(gap)
        elif (feed := self._channels.get(channel)) is not None:
            feed.gap(gap)

    def _channel_gap(self, gap: ChannelGap) -> None:
        """Mark the gap in every channel: a connection's loss or lag is any channel's."""
        for feed in self._channels.values():
            feed.gap(gap)

    # streamed calls
    @contextlib.asynccontextmanager
    async def rpc_call_stream(
        self,
        network: str,
        peer: str,
        method: str,
        payload: Any = None,
        *,
        data: bytes | None = None,
        timeout_ms: int | None = None,
    ) -> AsyncIterator[RpcStream]:
        """Call a streaming method with a JSON `payload`, or binary `data`: iterate the chunks
        (a binary one as bytes) in the block; leaving the block before the daemon ended the
        stream (early, or after a `lagged` or `bad_payload` that ended it only here) cancels
        the call on the serving side."""
        # the daemon's deadline is for the whole stream: past it (and the margin an rpc_call
        # waits) the iteration fails even if the daemon never ends the stream
        allowed = stream_allowed(timeout_ms)
        deadline = trio.current_time() + allowed
        self._streams.opening += 1
        try:
            answer = await self.call(
                "rpc_call_stream",
                params(network=network, peer=peer, method=method, timeout_ms=timeout_ms)
                | payload_params(payload, data),
            )
            stream = self._streams.open(answer["request_id"], deadline, allowed)
        finally:
            self._streams.done_opening()
        try:
            yield stream
        finally:
            self._streams.forget(stream)
            if not stream.daemon_done:
                await self._cancel_left(stream.request_id)

    async def _cancel_left(self, request_id: str) -> None:
        """Cancel a stream its caller left before the daemon ended it. However the cancel
        ends (answered ok, failed, or out of time) the stream table drops its events until
        its end or its deadline (`StreamTable.forget`), so nothing is left to do on failure."""
        with trio.move_on_after(RELEASE_TIMEOUT, shield=True):
            with contextlib.suppress(ClientError):
                await self.rpc_cancel(request_id)

    # replicated state
    @contextlib.asynccontextmanager
    async def state(self, network: str) -> AsyncIterator[SharedState]:
        """A local copy of `network`'s shared state for the block: listed at once, then kept
        in sync from `state_changed` events, and listed again after each reconnect. A re-list
        the daemon refuses (say `no_such_network`) ends the block with its ClientError, raised
        as itself, as is the block's own error (not in an exception group)."""
        shared = SharedState(network)
        with self.events() as events:
            await shared.load(self)
            with one_error_bare():  # the block's or the follower's
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow_state, shared, events)
                    try:
                        yield shared
                    finally:
                        nursery.cancel_scope.cancel()

    async def _follow_state(self, shared: SharedState, events: EventStream) -> None:
        """Apply the network's changes; list the map again when some may have been missed."""
        async for event in events:
            if shared.wants(event):
                shared.apply(event)
            elif event.get("kind") in RELIST_KINDS or _connection_lagged(event):
                await self._relist(shared)

    async def _relist(self, shared: SharedState) -> None:
        """List the map again. One cut short by a lost connection is left to the reconnect,
        which lists it again; one past its deadline (a slow daemon, which no reconnect follows)
        is tried again after a doubling backoff (RELIST_RETRY_FIRST to RELIST_RETRY_MAX) until
        it is listed or the connection is lost. Events wait meanwhile, applied after it."""
        delay = RELIST_RETRY_FIRST
        while True:
            try:
                await shared.load(self)
            except ConnectionLost:
                return
            except DeadlineExceeded:
                await trio.sleep(delay)
                delay = min(delay * 2, RELIST_RETRY_MAX)
            else:
                return

    # networks
    async def ensure_networks(
        self, desired: Iterable[Mapping[str, Any]], *, purge_removed: bool = False
    ) -> NetworkSync:
        """Converge the daemon's joined networks to exactly `desired`: missing ones are added,
        changed ones updated, and every joined network NOT in `desired` is removed. Idempotent,
        and serialised so concurrent calls from one client never interleave."""
        async with self._networks_lock:
            return await converge(self, desired, purge_removed=purge_removed)


async def _let_finish(stream: BinaryStream) -> None:
    """A served stream's handler returned. After our end, what it sent may still be on its way
    (closing before both ends ended resets the stream, docs/protocol.md): wait, at most
    RELEASE_TIMEOUT, for the daemon to close the finished stream, discarding what the other
    end still sends. Without our end, closing cancels the stream, as the handler left it."""
    if not stream.sent_end:
        return
    with trio.move_on_after(RELEASE_TIMEOUT), contextlib.suppress(trio.ClosedResourceError):
        try:  # ClosedResourceError: the handler closed the stream itself
            await stream.finish()
        except StreamError as failed:  # nobody left to raise it to
            log.info("stream %s failed after its handler returned: %s", stream.stream_id, failed)


def _connection_lagged(event: dict[str, Any]) -> bool:
    """Whether `event` is the connection's `lagged` (a state change may be among what it
    skipped), not a channel pump's, which skipped that channel's messages alone."""
    return event.get("kind") == "lagged" and lagged_channel(event) is None


def _contents(frame: dict[str, Any]) -> list[tuple[Any, bytes | None]]:
    """A `channel_inbound`'s messages as (payload, data): a batch's JSON values (a batch sent
    with `payloads` arrives as one event), one JSON payload, or one binary payload's bytes."""
    if "payloads" in frame:
        return [(payload, None) for payload in frame["payloads"]]
    value = received(frame)
    return [(None, value) if isinstance(value, bytes) else (value, None)]
