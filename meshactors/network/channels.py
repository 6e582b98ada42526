"""Channels of one network: the `channels` part of its core and one `channel <name>` pump per
subscribed channel, made by the first subscriber and stopped after the last.

Received messages go from the frame handler to the channel's pump as event lines, encoded
once per frame whatever the number of subscribers (a bounded inbox of frames' worth of
events; a full one drops them, counts them, and marks where: the pump tells each subscriber
`lagged` there), which pushes them to each subscribed connection without waiting: a
connection that stops reading lags and is cut off by its own actor, never stalling the pump.
Retained values: the last `retain` message per (sender, channel) is kept here and shown to
each new subscriber at once; our own retained sends go again to every peer that becomes
active. Both stores are bounded (RETAINED_*); the oldest entry goes first.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Protocol

import attrs
import trio

from meshactors.actors import Actor, ChildSpec, Lagged, Restart, Subscriber, Supervisor
from meshactors.network.app_frames import Chan, ChanAck, ChanBatch, ChanRun, payload_of_frame
from meshactors.network.app_wire import AppWire, Postbox
from meshactors.network.payload import MAX_BATCH, Payload
from meshactors.network.peers import PeerStatus
from meshactors.network.retained import RetainedStore, received_store
from meshactors.network.rpc import SWEEP_INTERVAL, new_request_id
from meshactors.wire.ipc import ErrorCode, OpError, event_frame
from meshactors.wire.peer import Frame

MAX_CHANNELS = 256  # channels subscribed at once per network (one pump each)
PUMP_INBOX = 4096  # frames' events queued for one pump before more are dropped (told: lagged)
PUMP_SHUTDOWN_TIMEOUT = 1.0  # seconds a pump may take to stop
PUMP_END_TIMEOUT = 1.0  # seconds the pumps of a removed network have, together, to tell their
# subscribers the channel ended; a pump late by then is stopped and its subscribers told by core
MAX_TTL_MS = 600_000  # the longest a reliable send may wait for its acknowledgement
RELIABLE_RESEND = 1.0  # seconds between resends of an unacknowledged reliable message
MAX_RELIABLE_PENDING = 1024  # reliable sends waiting for an acknowledgement per network
RECENT_ACKS = 4096  # reliable message ids remembered to drop resent duplicates
ALL = "*"  # the target of a retained send to every peer
INBOUND = "channel_inbound"  # the event kind of a received message
UNSUBSCRIBED = "channel_unsubscribed"  # the event kind telling a subscriber its channel ended
LAGGED = "lagged"  # the event kind telling a subscriber how many events it missed, where
REMOVED = "network_removed"  # its reason: the network was removed
_PAYLOAD_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # as ipc.encode


class ChannelClient(Protocol):
    """A local connection's subscription to one channel, as channels see it (a daemon
    `ChannelSubscription` is one): what its messages are pushed to."""

    @property
    def client_id(self) -> str:
        """The connection's id: a connection reads a channel once."""

    @property
    def gone(self) -> bool:
        """Whether the connection ended: its subscriptions count as ended."""

    def push(self, kind: str, data: dict[str, Any], *, reserved: bool = False) -> bool: ...

    def push_frames(self, frames: list[bytes]) -> int: ...

    def end(self) -> None:
        """Its unsubscribe is answered (called by the connection, never here): nothing of the
        subscription is written after that answer."""


@attrs.frozen
class PumpJoin:
    """To a pump: `client` subscribes from now on."""

    client: ChannelClient


@attrs.frozen
class PumpLeave:
    """To a pump: the connection `client_id` no longer subscribes."""

    client_id: str


@attrs.frozen(eq=False)
class PumpEnd:
    """To a pump: the channel ended (`reason`): tell each subscriber so, after everything queued
    before, and push nothing more; `told` is set once they were."""

    reason: str
    told: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen
class PumpReliable:
    """To a pump: the event line of a reliable message. One a full inbox drops is no loss the
    subscribers are told of: it goes unacknowledged, so its sender sends it again."""

    lines: list[bytes]


# a frame's event lines (a reliable message's as such), a change of readers, or the channel's end
PumpMessage = list[bytes] | PumpReliable | PumpJoin | PumpLeave | PumpEnd


def _events_in(message: PumpMessage) -> int:
    """How many events a pump's subscribers miss when its inbox drops `message`: a frame's
    lines; a reliable message's none (it is sent again), and core waits to send the rest."""
    if isinstance(message, list):
        return len(message)
    return 0


def _pump_inbox() -> Subscriber[PumpMessage]:
    """A pump's inbox: PUMP_INBOX messages, past which event lines are dropped and a `Lagged`
    marker of their events left where they were."""
    return Subscriber[PumpMessage](PUMP_INBOX, weight=_events_in)


@attrs.define(eq=False)
class ChannelPump(Actor):
    """Fans one channel's messages out to its subscribed connections, never waiting. Core
    feeds it only by messages: event lines, and who joins or leaves; where its inbox dropped
    lines, it finds a `Lagged` marker and tells each subscriber then."""

    kind: ClassVar[str] = "channel"

    network: str
    channel: str
    inbox: Subscriber[PumpMessage] = attrs.field(factory=_pump_inbox)
    subscribers: dict[str, ChannelClient] = attrs.field(factory=dict)
    delivered: int = 0
    lagged: int = 0

    def figures(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "subscribers": sorted(self.subscribers),
            "delivered": self.delivered,
            "lagged": self.lagged,
            "inbox_dropped": self.inbox.skipped_total,
        }

    def inbox_statistics(self) -> trio.MemoryChannelStatistics:
        """Its inbox's buffer use (messages and lag markers), for the inspect tree."""
        return self.inbox.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for message in self.inbox:
            match message:
                case Lagged(skipped=skipped):
                    self.tell_lagged(skipped)
                case PumpJoin(client=client):
                    self.subscribers[client.client_id] = client
                case PumpLeave(client_id=client_id):
                    self.subscribers.pop(client_id, None)
                case PumpEnd():
                    tell_ended(
                        self.subscribers.values(), self.network, self.channel, message.reason
                    )
                    self.subscribers.clear()
                    message.told.set()
                case PumpReliable(lines=lines):
                    self.fan_out(lines)
                case _:
                    self.fan_out(message)
            # A full inbox is read without waiting: let others run between its messages (the
            # readers' forwarders, core), as a wait for each would.
            await trio.lowlevel.checkpoint()

    def fan_out(self, events: list[bytes]) -> None:
        """Push event lines, in order, to every subscriber; a full connection lags (per event),
        nobody waits."""
        for client in list(self.subscribers.values()):
            taken = client.push_frames(events)
            self.delivered += taken
            self.lagged += len(events) - taken

    def tell_lagged(self, skipped: int) -> None:
        """Tell every subscriber that `skipped` events of the channel were dropped here, after
        the events before them and before those after (a full connection lags it in turn)."""
        notice = {"network": self.network, "channel": self.channel, "skipped": skipped}
        for client in list(self.subscribers.values()):
            if not client.push(LAGGED, notice):
                self.lagged += 1


@attrs.define(eq=False)
class _Subscriptions:
    """A connection subscribed here: the channels it reads, each with its reader."""

    readers: dict[str, ChannelClient] = attrs.field(factory=dict)

    @property
    def gone(self) -> bool:
        """Whether the connection ended (its readers share it)."""
        return any(reader.gone for reader in self.readers.values())


@attrs.define(eq=False)
class ReliableSend:
    """A reliable send core resends until acknowledged; its sender waits on `done` (set on
    the acknowledgement, on a resend that failed, or at `expires`)."""

    ack: str
    peer: str
    frame: Chan
    expires: float  # trio time
    resend_at: float  # trio time
    done: trio.Event = attrs.field(factory=trio.Event)
    acknowledged: bool = False
    subscribers: int = 0
    error: OpError | None = None

    def outcome(self, ttl_ms: int) -> dict[str, Any]:
        """The answer of a done (or given up) send: acknowledged, or the OpError it ended with."""
        if self.acknowledged:
            return {"acknowledged": True, "subscribers": self.subscribers}
        if self.error is not None:
            raise self.error
        raise OpError(ErrorCode.TIMEOUT, f"no acknowledgement from {self.peer} within {ttl_ms} ms")


@attrs.define(eq=False)
class Channels:
    """One network's channel subscriptions, pumps, retained values and reliable sends, a part
    of its `core` actor."""

    network: str
    wire: AppWire
    supervisor: Supervisor | None = None  # the network's, which the pumps run under (set by it)
    postbox: Postbox = attrs.field(init=False)
    received: RetainedStore = attrs.field(factory=received_store, init=False)  # (sender, channel)
    own: RetainedStore = attrs.field(factory=RetainedStore, init=False)  # (channel, target)
    counters: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _pumps: dict[str, ChannelPump] = attrs.field(factory=dict, init=False)
    _readers: dict[str, set[str]] = attrs.field(factory=dict, init=False)  # channel → clients
    _subscribers: dict[str, _Subscriptions] = attrs.field(factory=dict, init=False)  # by client
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _removed: bool = attrs.field(default=False, init=False)  # `network_removed` ran
    # the channels `network_removed` ends, each with its pump's end and readers, till told
    _ending: dict[str, tuple[PumpEnd, list[ChannelClient]]] = attrs.field(factory=dict, init=False)
    _reliable: dict[str, ReliableSend] = attrs.field(factory=dict, init=False)
    _recent_acks: collections.OrderedDict[tuple[str, str], int] = attrs.field(
        factory=collections.OrderedDict, init=False
    )

    def __attrs_post_init__(self) -> None:
        self.postbox = Postbox(self.wire)
        self.wire.register(Chan.tag, self._on_message)
        self.wire.register(ChanBatch.tag, self._on_batch)
        self.wire.register(ChanRun.tag, self._on_run)
        self.wire.register(ChanAck.tag, self._on_ack)

    def figures(self) -> dict[str, object]:
        return {
            "channels": sorted(self._pumps),
            "retained_received": len(self.received),
            "retained_own": len(self.own),
            "reliable_pending": len(self._reliable),
            "postbox": self.postbox.queued,
            "counters": dict(self.counters),
            "dropped": dict(self.postbox.dropped),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Core starts again with no peer session: each peer still there sends its retained
        # values again once active, and one that left meanwhile must not keep its own here.
        self.received = received_store()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._resend_reliable)
            nursery.start_soon(self._sweep_gone)
            task_status.started()
            await self.postbox.drain()

    # -- subscribing ------------------------------------------------------------------------

    async def subscribe(self, reader: ChannelClient, channel: str) -> dict[str, Any]:
        """Have `reader` read `channel` (starting its pump); it gets retained values at once.
        A connection that reads it already keeps the reader it has, so that reader's
        unsubscribe ends all it was given. OpError no_such_network once the network is being
        removed."""
        async with self._lock:
            if self._removed:
                raise OpError(ErrorCode.NO_SUCH_NETWORK, f"network {self.network!r} was removed")
            held = self._subscribers.get(reader.client_id)
            if held is not None and channel in held.readers:
                reader = held.readers[channel]
            else:
                pump = self._pumps.get(channel)
                if pump is None:
                    pump = await self._start_pump(channel)
                self._readers[channel].add(reader.client_id)
                subscriptions = self._subscribers.setdefault(reader.client_id, _Subscriptions())
                subscriptions.readers[channel] = reader
                await pump.inbox.send(PumpJoin(reader))
        retained = [(key[0], value) for key, value in self.received.items() if key[1] == channel]
        for sender, payload in retained:
            reader.push(INBOUND, self._event(sender, channel, payload, retained=True))
        return {"network": self.network, "channel": channel, "retained": len(retained)}

    async def unsubscribe(self, client_id: str, channel: str) -> ChannelClient | None:
        """Take the connection `client_id` off `channel`; the last one out stops the pump.
        Returns its reader, for the connection to `end`; None if it did not read it."""
        async with self._lock:
            if client_id not in self._readers.get(channel, set()):
                return None
            return await self._leave(client_id, channel)

    async def _leave(self, client_id: str, channel: str) -> ChannelClient:
        """(Under the lock.) Take `client_id` off `channel`, which it reads; the last one out
        stops the pump. Returns its reader."""
        readers = self._readers[channel]
        readers.discard(client_id)
        subscriptions = self._subscribers[client_id]
        reader = subscriptions.readers.pop(channel)
        if not subscriptions.readers:
            del self._subscribers[client_id]
        if readers:
            await self._pumps[channel].inbox.send(PumpLeave(client_id))
        else:
            await self._stop_pump(channel)
        return reader

    async def _start_pump(self, channel: str) -> ChannelPump:
        if self.supervisor is None:
            raise OpError(ErrorCode.UNAVAILABLE, f"channels of {self.network} are not running")
        if len(self._pumps) >= MAX_CHANNELS:
            await self._release_gone()  # a table full of what gone connections left has room
        if len(self._pumps) >= MAX_CHANNELS:
            raise OpError(ErrorCode.CONFLICT, f"at most {MAX_CHANNELS} channels per network")
        pump = ChannelPump(self.network, channel)
        try:
            # A pump of this name we do not record (a stop that never reached the supervisor)
            # is replaced.
            await self.supervisor.start_child(_pump_spec(pump), replace=True)
        except BaseException:
            # Core crashed or gave up waiting: the supervisor may still start it, so have it
            # stopped after that; we record only what the supervisor said it started.
            self.supervisor.stop_child_nowait(_pump_name(channel))
            raise
        self._pumps[channel], self._readers[channel] = pump, set()
        return pump

    def pump_specs(self) -> list[ChildSpec]:
        """The pumps of the channels subscribed now, for a network that starts again: its
        subscribers and queued messages are kept in each pump."""
        return [_pump_spec(pump) for pump in self._pumps.values()]

    async def _stop_pump(self, channel: str) -> None:
        # Forgotten first: a stop sent is done even if core stops waiting for it (a crash), so
        # keeping the pump would have later subscribers join one that no longer runs.
        del self._pumps[channel], self._readers[channel]
        if self.supervisor is not None:
            await self.supervisor.stop_child(_pump_name(channel))

    async def network_removed(self) -> None:
        """The network is removed: each pump tells its subscribers that the channel ended
        (`channel_unsubscribed`, reserved: a lagging connection cannot skip it) after what it
        was given before, and pushes nothing more, so nothing of the channel follows the
        notice; later subscribes are refused. A pump that did not within PUMP_END_TIMEOUT
        (say it crashed and waits for its restart) is stopped, and then its subscribers are
        told from here; those the network's stop catches untold are told after it
        (`stopped_removed`)."""
        async with self._lock:
            self._removed = True
            pumps = self._pumps
            self._ending = {
                channel: (PumpEnd(REMOVED), readers)
                for channel, readers in self._take_readers().items()
            }
            with trio.move_on_after(PUMP_END_TIMEOUT):
                for channel, (end, _readers) in self._ending.items():
                    await pumps[channel].inbox.send(end)
                for end, _readers in self._ending.values():
                    await end.told.wait()
            for channel, (end, readers) in list(self._ending.items()):
                if not end.told.is_set() and self.supervisor is not None:
                    await self.supervisor.stop_child(_pump_name(channel))
                if not end.told.is_set():  # it can push nothing more: no message follows
                    tell_ended(readers, self.network, channel, REMOVED)
                del self._ending[channel]

    def stopped_removed(self) -> None:
        """The network, removed, has stopped, and with it core and every pump: the subscribers
        nobody told (core never got to `network_removed`, say its ask timed out, or the stop
        cut it short) are told now; nothing of their channels can follow."""
        untold = {c: readers for c, (end, readers) in self._ending.items() if not end.told.is_set()}
        self._ending = {}
        for channel, readers in (untold | self._take_readers()).items():
            tell_ended(readers, self.network, channel, REMOVED)

    def _take_readers(self) -> dict[str, list[ChannelClient]]:
        """Every subscription, by channel, taken out of the tables (which are left empty)."""
        readers = {
            channel: [self._subscribers[client].readers[channel] for client in sorted(ids)]
            for channel, ids in sorted(self._readers.items())
        }
        self._pumps, self._readers, self._subscribers = {}, {}, {}
        return readers

    async def client_gone(self, client_id: str) -> None:
        """Unsubscribe a closed connection from every channel it read."""
        subscriptions = self._subscribers.get(client_id)
        for channel in sorted(subscriptions.readers if subscriptions else ()):
            await self.unsubscribe(client_id, channel)

    async def _sweep_gone(self) -> None:
        """End the subscriptions of connections that are gone every SWEEP_INTERVAL: their
        close's own unsubscribe was cut off or never came (a flood of closes outran its
        deadline), and they would hold their channels' pumps for good."""
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            async with self._lock:
                await self._release_gone()

    async def _release_gone(self) -> None:
        """(Under the lock.) End every subscription of connections that are gone, counted as
        `orphans_released`."""
        gone = [(client_id, s) for client_id, s in self._subscribers.items() if s.gone]
        for client_id, subscriptions in gone:
            for channel in sorted(subscriptions.readers):
                await self._leave(client_id, channel)
                self.counters["orphans_released"] += 1

    # -- sending ----------------------------------------------------------------------------

    async def send_to(
        self,
        peer: str,
        channel: str,
        groups: list[list[Payload]],
        *,
        retain: bool,
        separate: bool = False,
    ) -> None:
        """Send to one peer (or this daemon): each group of payloads as one batch event, or
        with `separate` as one event each; with `retain` the last payload is also sent to the
        peer whenever it becomes active again (unless this send fails)."""
        with self._retaining((channel, peer), groups[-1][-1] if retain else None):
            for frame in _message_frames(channel, groups, retain, separate):
                await self.wire.send(peer, frame)
        self.counters["sent"] += sum(map(len, groups))

    async def send_all(
        self, channel: str, groups: list[list[Payload]], *, retain: bool, separate: bool = False
    ) -> list[str]:
        """Send to every active peer (not this daemon), as `send_to` does; returns the peers it
        went to."""
        frames = _message_frames(channel, groups, retain, separate)
        sent = []
        with self._retaining((channel, ALL), groups[-1][-1] if retain else None):
            for peer in self.wire.active_peers():
                try:
                    for frame in frames:
                        await self.wire.send(peer, frame)
                except OpError as failed:  # it left meanwhile
                    self.counters[f"send_all_{failed.code.value}"] += 1
                    continue
                sent.append(peer)
        self.counters["sent"] += len(sent) * sum(map(len, groups))
        return sent

    @contextlib.contextmanager
    def _retaining(self, key: tuple[str, str], payload: Payload | None) -> Iterator[None]:
        """Keep `payload` (unless None) as our retained value of `key` from the start of a
        send, so a peer that becomes active meanwhile gets it; a send that fails or is
        cancelled puts back the value there was, so a caller's retry sends no duplicate."""
        if payload is None:
            yield
            return
        previous = self.own.get(key)
        self.own.put(key, payload)
        try:
            yield
        except BaseException:
            self.own.restore(key, previous)
            raise

    async def start_reliable(
        self, peer: str, channel: str, payload: Payload, ttl_ms: int, ack: str | None = None
    ) -> ReliableSend:
        """Send to one peer and keep resending (`_resend_reliable`) until its daemon
        acknowledges or `ttl_ms` passes; the caller waits on the returned send's `done`. The
        message id is `ack` when the program chose one (the same id again is the same message:
        the receiver drops it and acknowledges it again), else a fresh one."""
        if not 0 < ttl_ms <= MAX_TTL_MS:
            raise OpError(ErrorCode.INVALID_PARAMS, f"ttl_ms must be 1-{MAX_TTL_MS}")
        if len(self._reliable) >= MAX_RELIABLE_PENDING:
            raise OpError(ErrorCode.CONFLICT, f"at most {MAX_RELIABLE_PENDING} reliable sends")
        if ack is not None and ack in self._reliable:
            raise OpError(ErrorCode.CONFLICT, f"a reliable send with id {ack!r} is still waiting")
        ack, now = ack or new_request_id(), trio.current_time()
        frame = Chan(channel, payload.value, payload.binary, ack=ack)
        reliable = ReliableSend(ack, peer, frame, now + ttl_ms / 1000, now + RELIABLE_RESEND)
        self._reliable[ack] = reliable  # before the send: our own device acks at once
        try:
            await self.wire.send(peer, frame)
        except BaseException:
            del self._reliable[ack]
            raise
        self.counters["sent"] += 1  # once: its resends are the same message
        return reliable

    def end_reliable(self, ack: str) -> None:
        """Forget a reliable send its sender stopped waiting for."""
        self._reliable.pop(ack, None)

    async def _resend_reliable(self) -> None:
        """Resend each unacknowledged reliable message every RELIABLE_RESEND seconds; end those
        past their time, or whose resend failed (the peer left: the sender hears why)."""
        while True:
            await trio.sleep(RELIABLE_RESEND / 4)
            now = trio.current_time()
            for reliable in list(self._reliable.values()):
                if now >= reliable.expires:
                    self._settle(reliable)
                elif now >= reliable.resend_at:
                    reliable.resend_at = now + RELIABLE_RESEND
                    try:
                        await self.wire.send(reliable.peer, reliable.frame)
                    except OpError as failed:
                        reliable.error = failed
                        self._settle(reliable)

    def _settle(self, reliable: ReliableSend) -> None:
        """A reliable send is over: forget it, wake its sender."""
        self._reliable.pop(reliable.ack, None)
        reliable.done.set()

    # -- receiving --------------------------------------------------------------------------

    def _on_message(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, Chan)
        if frame.ack is not None and self._seen(sender, frame.ack):
            return
        payload = payload_of_frame(frame)
        if frame.retain:
            self.received.put((sender, frame.channel), payload)
        ((field, value),) = payload.fields().items()
        head = self._head(sender, frame.channel)
        subscribers = self._accept(
            frame.channel,
            1,
            lambda: _event_lines(head, field, [value]),
            reliable=frame.ack is not None,
        )
        if frame.ack is not None and subscribers is not None:
            self._recent_acks[(sender, frame.ack)] = subscribers
            if len(self._recent_acks) > RECENT_ACKS:
                self._recent_acks.popitem(last=False)
            self.postbox.post(sender, ChanAck(frame.ack, subscribers))

    def _on_batch(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, ChanBatch)
        event = self._head(sender, frame.channel) | {"payloads": frame.payloads}
        self._accept(frame.channel, len(frame.payloads), lambda: [event_frame(INBOUND, event)])
        if frame.retain:
            self.received.put((sender, frame.channel), Payload(frame.payloads[-1]))

    def _on_run(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, ChanRun)
        field = "payload_b64" if frame.binary else "payload"
        head = self._head(sender, frame.channel)
        self._accept(
            frame.channel, len(frame.payloads), lambda: _event_lines(head, field, frame.payloads)
        )
        if frame.retain:
            self.received.put((sender, frame.channel), Payload(frame.payloads[-1], frame.binary))

    def _accept(
        self,
        channel: str,
        count: int,
        events: Callable[[], list[bytes]],
        *,
        reliable: bool = False,
    ) -> int | None:
        """Hand one frame's `count` messages to the channel's pump as event lines (encoded
        only if someone subscribes); returns how many subscribers they reach, or None when the
        pump was full: dropped, counted, and, unless `reliable` (resent until acknowledged),
        marked in its inbox for the pump to tell its subscribers where."""
        self.counters["received"] += count
        self.counters["frames_received"] += 1  # received / frames_received: how well runs batch
        pump = self._pumps.get(channel)
        if pump is None:
            return 0
        lines = events()
        if not pump.inbox.offer(PumpReliable(lines) if reliable else lines):
            self.counters["pump_full"] += len(lines)
            return None
        return len(self._readers[channel])

    def _seen(self, sender: str, ack: str) -> bool:
        """A resent reliable message we accepted already: acknowledge it again, drop it."""
        subscribers = self._recent_acks.get((sender, ack))
        if subscribers is None:
            return False
        self.counters["duplicates"] += 1
        self.postbox.post(sender, ChanAck(ack, subscribers))
        return True

    def _on_ack(self, sender: str, frame: Frame) -> None:
        """A peer took a reliable message of ours; an ack for none sent to it is counted."""
        assert isinstance(frame, ChanAck)
        reliable = self._reliable.get(frame.ack)
        if reliable is None or reliable.peer != sender:
            self.counters["stray_acks"] += 1
            return
        reliable.subscribers, reliable.acknowledged = frame.subscribers, True
        self._settle(reliable)

    def _head(self, sender: str, channel: str) -> dict[str, Any]:
        """The fields every message event of `sender` on `channel` begins with."""
        return {"network": self.network, "from": sender, "channel": channel}

    def _event(
        self, sender: str, channel: str, payload: Payload, *, retained: bool
    ) -> dict[str, Any]:
        data = self._head(sender, channel) | payload.fields()
        if retained:
            data["retained"] = True
        return data

    def on_peer_status(self, device_id: str, status: PeerStatus) -> None:
        """A peer that becomes active gets our retained values; one that leaves loses its own."""
        if status is PeerStatus.ACTIVE:
            for (channel, target), payload in self.own.items():
                if target in (ALL, device_id):
                    frame = Chan(channel, payload.value, payload.binary, retain=True)
                    self.postbox.post(device_id, frame)
            return
        for sender, channel in [key for key, _ in self.received.items() if key[0] == device_id]:
            self.received.pop((sender, channel))


def _message_frames(
    channel: str, groups: list[list[Payload]], retain: bool, separate: bool
) -> list[Frame]:
    """The frames of each group of payloads, in order (see `_group_frames`)."""
    return [frame for group in groups for frame in _group_frames(channel, group, retain, separate)]


def _group_frames(
    channel: str, payloads: list[Payload], retain: bool, separate: bool
) -> list[Frame]:
    """One `chan` frame for one payload; several as one `chan_batch` (JSON payloads only), or,
    when `separate` (all binary or none), as `chan_run` frames of at most MAX_BATCH each (the
    peer table splits one too large to send)."""
    if len(payloads) == 1:
        return [Chan(channel, payloads[0].value, payloads[0].binary, retain)]
    values = [payload.value for payload in payloads]
    if not separate:
        return [ChanBatch(channel, values, retain)]
    binary = payloads[0].binary
    return [
        ChanRun(channel, values[start : start + MAX_BATCH], binary, retain)
        for start in range(0, len(values), MAX_BATCH)
    ]


def _event_lines(head: dict[str, Any], field: str, values: list[Any]) -> list[bytes]:
    """One `channel_inbound` event line per value (under `field`), as `event_frame` writes
    them, with the head they share encoded once."""
    start = event_frame(INBOUND, head | {field: None})[: -len(b"null}\n")]
    return [start + _PAYLOAD_JSON.encode(value).encode() + b"}\n" for value in values]


def tell_ended(clients: Iterable[ChannelClient], network: str, channel: str, reason: str) -> None:
    """Push `channel_unsubscribed` to each of `clients`, in the reserve (never skipped)."""
    for client in clients:
        ended = {"network": network, "channel": channel, "reason": reason}
        client.push(UNSUBSCRIBED, ended, reserved=True)


def _pump_name(channel: str) -> str:
    return f"channel {channel}"


def _pump_spec(pump: ChannelPump) -> ChildSpec:
    """How a pump runs: restarted after a crash, its own or a sibling's before it (the
    network's rest_for_one), with its subscribers and inbox; stopped with its last subscriber."""
    return ChildSpec(
        _pump_name(pump.channel), pump, Restart.TRANSIENT, shutdown_timeout=PUMP_SHUTDOWN_TIMEOUT
    )
