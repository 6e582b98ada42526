"""The `link` actor: one network's WebSocket to a broker, kept up with backoff.

It connects to the configured broker URLs in turn, sends the signed hello, waits for the
welcome, then relays over trio-websocket: binary batches in (to the network's `core` actor, one
message per batch) and sealed records out (the one writer drains a bounded queue, several
records per WebSocket message). Messages to the broker keep within PACE_SHARE of the rate and
burst its welcome announces (a broker closes a connection that exceeds them): past that,
records wait in the queue and leave together in the next message the rate allows. A message the
broker does not take within LINK_SEND_TIMEOUT ends the connection, heard or not. When the
connection drops, senders waiting on the queue fail with LinkDown and the link reconnects after
a full-jitter exponential backoff, reset by a session that lasted SHORT_SESSION (sessions
shorter in a row grow it, as failures do). What it sends and reads is the broker protocol of
meshactors/wire/broker.py (the broker imports the same module); presence and undeliverable
notices go to core as they decode, and one it cannot read is counted.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

import attrs
import structlog
import trio
from nacl.signing import SigningKey

from meshactors.actors import Actor, Inbox, cleanup_scope, take_queued
from meshactors.broker.limits import TokenBucket
from meshactors.clock import wall_ms
from meshactors.event_hub import EventPublisher
from meshactors.keepalive import PingOutcome, await_pong
from meshactors.network.link_errors import LinkError, LinkErrorKind, classify
from meshactors.socket_io import QuickSocketStream
from meshactors.wire.broker import (
    RECORD_HEADER_BYTES,
    BrokerProtocolError,
    MalformedBatch,
    PresenceJoin,
    PresenceLeave,
    Undeliverable,
    Welcome,
    build_hello,
    decode_batch,
    decode_notice,
    decode_welcome,
    encode_batch,
)

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

log = structlog.get_logger("meshactors.link")

_Queued = tuple[bytes, bytes]  # (destination public key, sealed bytes) for the writer

BACKOFF_BASE = 0.25  # seconds: the first retry waits up to this long
BACKOFF_CAP = 30.0  # seconds: no retry ever waits longer
# seconds a session must last from its welcome to reset the backoff: one shorter (a broker that
# welcomes and closes at once) counts as a failed attempt and the next URL is tried; the backoff
# grows with such sessions in a row, where the same broker would be retried at the first step
# for ever (a welcome still forgets the failures before it: one short session after an outage
# waits as the first retry does)
SHORT_SESSION = 10.0
CONNECT_TIMEOUT = 10.0  # seconds for TCP, the TLS handshake (wss://) and the WebSocket upgrade
WELCOME_TIMEOUT = 10.0  # seconds for our hello to leave and the broker's welcome to come back
CLOSE_TIMEOUT = 2.0  # seconds for the WebSocket closing handshake
LEAVE_TIMEOUT = 2 * CLOSE_TIMEOUT  # seconds to be done with a connection we left, close and all
LINK_PING_INTERVAL = 20.0  # seconds between our keepalive pings to the broker
LINK_PONG_TIMEOUT = 20.0  # seconds without a pong or anything else before the link is dropped
# seconds without a pong before the link is dropped even while the broker is heard (three
# deadlines: the swarm's busy hosts answered some 20 s late; as long as LINK_SEND_TIMEOUT)
LINK_PONG_CEILING = 60.0
# one message to the broker not taken in full this long ends the connection, even while the
# broker is heard: one that talks but never reads would otherwise hold our writer for ever
LINK_SEND_TIMEOUT = 60.0
OUTBOUND_QUEUE = 8192  # sealed records waiting for the writer; senders wait beyond it
BATCH_MAX_RECORDS = 1024  # records joined into one WebSocket message
BATCH_IDLE_PASSES = 3  # under load: scheduler passes without a new record before a batch goes
MAX_INBOUND_MESSAGE_BYTES = 4 * 1024 * 1024  # largest message we accept from a broker
RECEIVE_BUFFER_BYTES = 64 * 1024  # bytes trio-websocket's reader asks the socket for at a time
PACE_SHARE = 0.9  # of the broker's message rate and burst we use: jitter never trips its limit
LINK_ROLE = "daemon"  # the role announced when none was declared
LINK_INBOX = 4  # broker lists waiting for the link (network_update sends one)
ROLES = (LINK_ROLE, "service", "control-plane")  # the roles `daemon up --role` may declare


class LinkDown(Exception):
    """The network's broker link is not up: the frame was not sent."""


@attrs.frozen
class LinkOutbound:
    """The writer queue of a link that is up, held by core from LinkUp to LinkLost: core puts
    sealed records on it; the link closes its end when the connection drops (→ LinkDown)."""

    _network: str
    _channel: trio.MemorySendChannel[_Queued]

    def send_nowait(self, to: bytes, sealed: bytes) -> bool:
        """Queue one sealed record without waiting; False when the queue is full (use `send`).
        Raises LinkDown when the connection dropped."""
        try:
            self._channel.send_nowait((to, sealed))
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LinkDown(f"network {self._network}: the broker link dropped") from None
        return True

    async def send(self, to: bytes, sealed: bytes) -> None:
        """Queue one sealed record, waiting while the queue is full; LinkDown when the
        connection dropped (or drops while this waits)."""
        try:
            await self._channel.send((to, sealed))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LinkDown(f"network {self._network}: the broker link dropped") from None


@attrs.frozen
class LinkUp:
    """The broker welcomed us; `peers` are the (device_id, role) pairs present, `outbound`
    the queue records to them go on until LinkLost."""

    url: str
    peers: list[tuple[str, str]]
    outbound: LinkOutbound


@attrs.frozen
class LinkLost:
    """The connection dropped; the link is reconnecting."""

    reason: str


@attrs.frozen
class LinkStatus:
    """The link's state changed while it was not up (connecting, backoff, stopped), with why
    the last attempt failed: core keeps it for status and networks_list."""

    state: str
    url: str | None
    error: LinkError | None


@attrs.frozen
class UseBrokers:
    """A message to the link: connect to these brokers from now on (network_update)."""

    brokers: list[str]


@attrs.frozen
class Park:
    """A message to the link: leave the broker and stay away until the network is joined
    again (this device was evicted from the closed network)."""


@attrs.frozen
class InboundRecords:
    """One batch of (sender public key, sealed bytes) records from the broker."""

    records: list[tuple[bytes, bytes]]


LinkEvent = (
    LinkUp | LinkLost | LinkStatus | PresenceJoin | PresenceLeave | InboundRecords | Undeliverable
)


class LinkEventSink(Protocol):
    """Where the link delivers what it hears: core's inbox."""

    async def send(self, event: LinkEvent, /) -> None: ...


def pace(welcome: Welcome) -> TokenBucket:
    """The bucket our messages are drawn from: PACE_SHARE of the rate and burst the broker's
    welcome announces."""
    rate, burst = welcome.message_rate * PACE_SHARE, welcome.message_burst * PACE_SHARE
    return TokenBucket(rate, max(1.0, burst))


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)] seconds."""
    return rng.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 32)))


@attrs.define(eq=False)
class Link(Actor):
    """Keeps one network's broker connection up and moves sealed records both ways."""

    kind: ClassVar[str] = "link"

    network: str
    brokers: list[str]
    signing_key: SigningKey = attrs.field(repr=False)
    deliver: LinkEventSink
    role: str = LINK_ROLE
    rng: random.Random = attrs.field(factory=random.Random)
    state: str = "idle"  # idle, connecting, up, backoff, stopped
    url: str | None = None
    connects: int = 0
    failures: int = 0
    frames_in: int = 0
    frames_out: int = 0
    batches_in: int = 0
    batches_out: int = 0
    dropped: int = 0  # records that never left: queued when the link dropped, or oversize
    malformed: int = 0  # broker messages we could not read
    send_timeouts: int = 0  # connections ended because the broker took no message in time
    _heard: int = 0  # messages read from the broker: a keepalive's sign of life
    last_error: LinkError | None = None  # why the link is not up, if it is not
    events: EventPublisher | None = None  # where `network_link_error` goes (none in unit tests)
    _reported: LinkError | None = None  # the error last logged and published
    _attempt: int = 0  # failed attempts since the backoff was last reset: its exponent
    _short_streak: int = 0  # sessions in a row that ended before SHORT_SESSION
    _next_url: int = 0
    inbox: Inbox[UseBrokers | Park] = attrs.field(factory=lambda: Inbox(LINK_INBOX))
    _parked: bool = False  # told to stay away (Park)
    _outbound: trio.MemoryReceiveChannel[_Queued] | None = None  # the up connection's queue
    _pace: TokenBucket = attrs.field(factory=lambda: pace(Welcome([])))  # messages we may send
    _cycle: trio.CancelScope | None = None

    def inbox_statistics(self) -> trio.MemoryChannelStatistics | None:
        """The outbound channel its writer drains (none while the link is not up)."""
        return None if self._outbound is None else self._outbound.statistics()

    def figures(self) -> dict[str, object]:
        queued = 0 if self._outbound is None else self._outbound.statistics().current_buffer_used
        return {
            "state": self.state,
            "url": self.url,
            "connects": self.connects,
            "failures": self.failures,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "batches_in": self.batches_in,
            "batches_out": self.batches_out,
            "queued": queued,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "send_timeouts": self.send_timeouts,
            "last_error": None if self.last_error is None else self.last_error.view(),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state = "connecting"
        task_status.started()
        try:
            # What was said before it ran (a Park at load) holds from the start.
            for message in take_queued(self.inbox.receiver, LINK_INBOX):
                self._take(message)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._take_brokers)
                await self._connect_forever()
        finally:
            self.state = "stopped"
            self._cycle = None
            with cleanup_scope():
                await self._report()

    async def _connect_forever(self) -> None:
        """Connect to each broker in turn, with backoff between failed attempts, until parked.
        An attempt failed unless its session held SHORT_SESSION: one that held resets the
        backoff, a shorter one sets it to the short sessions in a row before it."""
        while not self._parked:
            with trio.CancelScope() as self._cycle:
                url = self.brokers[self._next_url % len(self.brokers)]
                self.state = "connecting"
                await self._report()
                welcomed_for = await self._connect_once(url)
                held = welcomed_for is not None and welcomed_for >= SHORT_SESSION
                if welcomed_for is not None:  # a welcome ends an outage: the failures before
                    # it are behind us, and only the short sessions in a row before this one
                    # still grow the backoff (a broker that closes each at once is not retried
                    # at the first step for ever)
                    self._attempt = 0 if held else self._short_streak
                    self._short_streak = 0 if held else self._short_streak + 1
                if not held:
                    self.failures += 1
                if not held or self._left_for_silence():
                    self._next_url += 1  # try the next broker in turn
                self.state = "backoff"
                await self._report()
                await trio.sleep(self._backoff())
                self._attempt += 1
        self.state = "stopped"
        await self._report()
        await trio.sleep_forever()

    def _left_for_silence(self) -> bool:
        """Whether the session just ended was left by our own deadlines (keepalive, a send
        not taken): the broker hangs, and the next in the list is tried first. One the broker
        or the network closed after it held SHORT_SESSION is tried first again: where its peers
        still are, when several brokers listed are not one cluster."""
        return self.last_error is not None and self.last_error.kind is LinkErrorKind.TIMEOUT

    async def _take_brokers(self) -> None:
        """Use each new broker list from the inbox: drop the connection, connect again at once
        (or, parked, for good)."""
        async for message in self.inbox.receiver:
            self._take(message)
            if self._cycle is not None:
                self._cycle.cancel()

    def _take(self, message: UseBrokers | Park) -> None:
        if isinstance(message, Park):
            self._parked = True
        else:
            self.brokers = list(message.brokers)
            self._next_url = 0
            self._attempt = self._short_streak = 0

    async def _report(self) -> None:
        """Tell core the state the link is in now."""
        await self.deliver.send(LinkStatus(self.state, self.url, self.last_error))

    async def _connect_once(self, url: str) -> float | None:
        """One connection's life; returns the seconds from the broker's welcome to the
        connection's end, None when it did not welcome us."""
        # trio-websocket is imported by the first connection, after READY (a cold start
        # without it is ~30 ms shorter; docs/performance.md, "Cold start").
        from trio_websocket import ConnectionClosed, HandshakeError
        from wsproto.utilities import LocalProtocolError

        welcomed, welcomed_at = False, 0.0
        try:
            with trio.CancelScope() as leaving:
                async with open_broker_websocket(url) as ws:
                    try:
                        hello = build_hello(
                            self.signing_key,
                            self.network,
                            self.role,
                            now_ms=wall_ms(),
                        )
                        with trio.fail_after(WELCOME_TIMEOUT):  # a broker that never reads too
                            await ws.send_message(hello)
                            welcome = decode_welcome(await ws.get_message())
                        welcomed, welcomed_at = True, trio.current_time()
                        await self._serve(ws, url, welcome)
                    finally:  # leaving waits for trio-websocket's reader, which a cut close
                        # (ours, or the broker's reply behind our stuck write) leaves parked
                        leaving.deadline = trio.current_time() + LEAVE_TIMEOUT
            if leaving.cancelled_caught:
                left = f"the connection did not end within {LEAVE_TIMEOUT:g} s of leaving it"
                self._ended(LinkError(LinkErrorKind.TIMEOUT, left), url, welcomed=welcomed)
        except (
            ConnectionClosed,
            HandshakeError,
            OSError,
            trio.TooSlowError,
            BrokerProtocolError,
            LocalProtocolError,  # trio-websocket answered a ping on a closing connection
        ) as exc:
            self._ended(exc, url, welcomed=welcomed)
        return trio.current_time() - welcomed_at if welcomed else None

    def _backoff(self) -> float:
        """Seconds before the next attempt: full jitter, or the longest wait at once after an
        error retrying cannot heal (a wrong path, a refused hello)."""
        if self.last_error is not None and not self.last_error.heals_by_retrying:
            return BACKOFF_CAP
        return backoff_delay(self._attempt, self.rng)

    def _ended(self, error: BaseException | LinkError, url: str, *, welcomed: bool) -> None:
        """Record why a connection ended, unless its session said why first (a keepalive that
        closed it: the close that follows is its effect, not its cause)."""
        if not welcomed or self.last_error is None:
            if not isinstance(error, LinkError):
                error = classify(error, url, welcomed=welcomed)
            self._failed(error, url)

    def _failed(self, error: LinkError, url: str) -> None:
        """Record why the link is down; a new reason is logged once and published."""
        self.last_error = error
        if error == self._reported:
            log.debug("broker link down", network=self.network, url=url, error=str(error))
            return
        self._reported = error
        log.warning("broker link down", network=self.network, url=url, error=str(error))
        if self.events is not None:
            self.events.publish(
                "network_link_error", {"network": self.network, "url": url, "error": error.view()}
            )

    async def _serve(self, ws: WebSocketConnection, url: str, welcome: Welcome) -> None:
        """Relay until the connection drops; tell core it is up, and that it went down."""
        send, receive = trio.open_memory_channel[_Queued](OUTBOUND_QUEUE)
        self.connects += 1
        self.state, self.url, self.last_error, self._reported = "up", url, None, None
        self._outbound = receive
        self._pace = pace(welcome)
        log.info("broker link up", network=self.network, url=url, peers=len(welcome.peers))
        try:
            await self.deliver.send(LinkUp(url, welcome.peers, LinkOutbound(self.network, send)))
            async with trio.open_nursery() as nursery:
                session = nursery.cancel_scope
                max_bytes = min(welcome.max_message_bytes, MAX_INBOUND_MESSAGE_BYTES)
                nursery.start_soon(self._until_closed, session, self._write, ws, receive, max_bytes)
                nursery.start_soon(self._until_closed, session, self._keepalive, ws)
                nursery.start_soon(self._until_closed, session, self._read, ws)
        finally:
            self._outbound, self.state = None, "backoff"
            self.dropped += _drain(receive)  # closes it: core's sends fail with LinkDown
            with cleanup_scope():
                await self.deliver.send(LinkLost(str(self.last_error or "closed")))

    async def _until_closed(
        self, session: trio.CancelScope, task: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run one of the session's tasks; when the connection closes, end the whole session."""
        from trio_websocket import ConnectionClosed  # loaded by then (_connect_once)

        try:
            await task(*args)
        except ConnectionClosed as closed:
            self._ended(closed, self.url or "", welcomed=True)
        finally:
            session.cancel()

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            message = await ws.get_message()
            self._heard += 1
            if isinstance(message, str):
                event = self._notice(message)
                if event is not None:
                    await self.deliver.send(event)
                continue
            try:
                records = decode_batch(message)
            except MalformedBatch:
                self.malformed += 1
                continue
            self.batches_in += 1
            self.frames_in += len(records)
            await self.deliver.send(InboundRecords(records))

    def _notice(self, text: str) -> LinkEvent | None:
        try:
            return decode_notice(text)
        except BrokerProtocolError:
            self.malformed += 1
            return None

    async def _write(
        self,
        ws: WebSocketConnection,
        receive: trio.MemoryReceiveChannel[_Queued],
        max_bytes: int,
    ) -> None:
        """The one writer: drain the queue into as few messages as fit under the broker's size
        limit, at the pace its welcome allows. A message not taken within LINK_SEND_TIMEOUT
        ends the connection."""
        carry: _Queued | None = None
        while True:
            # Under load (a record was already waiting) the batch may wait a few idle scheduler
            # passes for more; a record that found the queue empty goes out at once.
            idle_passes = BATCH_IDLE_PASSES
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = receive.receive_nowait()
                except trio.WouldBlock:
                    first, idle_passes = await receive.receive(), 0
            if RECORD_HEADER_BYTES + len(first[1]) > max_bytes:
                self.dropped += 1
                continue
            if (wait := self._pace.delay(trio.current_time())) > 0:
                await trio.sleep(wait)  # over the broker's rate: records queued meanwhile join
            self._pace.spend(trio.current_time())
            batch, size, idle = [first], RECORD_HEADER_BYTES + len(first[1]), 0
            while len(batch) < BATCH_MAX_RECORDS and carry is None:
                try:
                    record = receive.receive_nowait()
                except trio.WouldBlock:
                    if idle >= idle_passes:
                        break
                    # Let busy senders add more before sending: the batch grows while the
                    # scheduler's passes bring new records and ends after a few idle ones.
                    idle += 1
                    await trio.lowlevel.checkpoint()
                    continue
                idle = 0
                size += RECORD_HEADER_BYTES + len(record[1])
                if size > max_bytes:
                    carry = record
                else:
                    batch.append(record)
            with trio.move_on_after(LINK_SEND_TIMEOUT) as stalled:
                await ws.send_message(encode_batch(batch))
            if stalled.cancelled_caught:  # it is not reading: its being heard does not help
                self.send_timeouts += 1
                self.dropped += len(batch) + (carry is not None)
                stuck = f"the broker took no message for {LINK_SEND_TIMEOUT:g} s: it is not reading"
                self._failed(LinkError(LinkErrorKind.TIMEOUT, stuck), self.url or "")
                await _abort(ws)
                return
            self.batches_out += 1
            self.frames_out += len(batch)

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        """Close a connection whose broker went silent: a ping unanswered for a whole
        LINK_PONG_TIMEOUT in which nothing else arrived either (a dead TCP path), or for
        LINK_PONG_CEILING whatever arrived (a broker too far behind on reading us)."""
        while True:
            await trio.sleep(LINK_PING_INTERVAL)
            outcome = await await_pong(
                ws.ping, lambda: self._heard, LINK_PONG_TIMEOUT, LINK_PONG_CEILING
            )
            if outcome is not PingOutcome.ANSWERED:
                why = (
                    f"the broker sent nothing, not even a pong, for {LINK_PONG_TIMEOUT:g} s"
                    if outcome is PingOutcome.SILENT
                    else f"the broker left our ping unanswered for {LINK_PONG_CEILING:g} s"
                )
                error = LinkError(LinkErrorKind.TIMEOUT, why)
                self._failed(error, self.url or "")
                with trio.move_on_after(CLOSE_TIMEOUT):  # a write stuck on a dead path
                    await ws.aclose(1001, "pong timeout")
                return


@asynccontextmanager
async def open_broker_websocket(url: str) -> AsyncIterator[WebSocketConnection]:
    """The WebSocket to the broker at `url`, over a TCP stream (TLS for wss://) opened here and
    handed to trio-websocket, so that however the connection ends its socket is closed then:
    trio-websocket leaves it open when our reply to the broker's Close waits behind a stuck
    write, with its reader task stuck there too. Bounded as trio-websocket bounds its own:
    CONNECT_TIMEOUT for TCP, TLS and the upgrade, CLOSE_TIMEOUT for the closing handshake."""
    from trio_websocket import wrap_client_stream

    parts = urlsplit(url)
    host, tls = parts.hostname or "", parts.scheme == "wss"  # checked when configured
    port = parts.port or (443 if tls else 80)
    upgraded_by = trio.current_time() + CONNECT_TIMEOUT
    stream: QuickSocketStream | trio.SSLStream[trio.SocketStream]
    # As trio-websocket does it: the default context, no close_notify on close. Made before
    # the connection, so that nothing between it and the stream's close can fail.
    context = ssl.create_default_context() if tls else None
    with _upgrading(upgraded_by, "TCP connection"):
        tcp = await trio.open_tcp_stream(host, port)
    if context is not None:
        stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
        with _upgrading(upgraded_by, "TLS handshake"):
            await _handshake(stream)
    else:
        stream = QuickSocketStream(tcp)  # a message to the broker a scheduler pass shorter
    try:
        async with trio.open_nursery() as nursery:
            try:
                with _upgrading(upgraded_by, "WebSocket upgrade"):
                    ws = await wrap_client_stream(
                        nursery,
                        stream,  # type: ignore[arg-type]  # any trio stream, its docstring says
                        host if port in (80, 443) else f"{host}:{port}",  # the Host header
                        parts.path or "/",
                        max_message_size=MAX_INBOUND_MESSAGE_BYTES,
                        receive_buffer_size=RECEIVE_BUFFER_BYTES,
                    )
                try:
                    yield ws
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await ws.aclose()
            finally:  # a reader stuck on the socket ends with it; the socket is closed before
                await stream.aclose()  # aclose checkpoints, so it is closed even when cancelled
    except BaseExceptionGroup as group:  # one error bare, as trio-websocket raises them
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _handshake(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """The TLS handshake, done before trio-websocket has the stream: its reader swallowed a
    failed one, and the attempt waited out CONNECT_TIMEOUT as a `timeout`. A failure raises
    HandshakeError from trio's BrokenResourceError, whose cause is the SSL error classify
    reads; failed or late, the socket is closed."""
    from trio_websocket import HandshakeError

    try:
        await stream.do_handshake()
    except BaseException as failed:
        await trio.aclose_forcefully(stream)
        if isinstance(failed, trio.BrokenResourceError):
            raise HandshakeError("the TLS handshake failed") from failed
        raise


@contextmanager
def _upgrading(deadline: float, step: str) -> Iterator[None]:
    """A step of connecting, up to the WebSocket upgrade, due by `deadline`; late, it raises
    trio-websocket's ConnectionTimeout naming the step (classify tells it from a late
    welcome, and says which step it was)."""
    from trio_websocket import ConnectionTimeout

    try:
        with trio.fail_at(deadline):
            yield
    except trio.TooSlowError:
        raise ConnectionTimeout(f"no {step} in time") from None


async def _abort(ws: WebSocketConnection) -> None:
    """Close the connection's socket at once, without the closing handshake: a Close frame
    after a message cut short would reach the broker as that message's tail."""
    with trio.CancelScope() as closing:
        closing.cancel()  # aclose sends nothing under it, and still closes the socket
        await ws.aclose(1001, "send timeout")


def _drain(receive: trio.MemoryReceiveChannel[_Queued]) -> int:
    """Empty the queue and close it; returns how many records it held."""
    held = len(take_queued(receive, receive.statistics().current_buffer_used))
    receive.close()
    return held
