"""The `link` actor: one network's WebSocket to a broker, kept up with backoff.

It connects to the configured broker URLs in turn, sends the signed hello, waits for the
welcome, then relays over trio-websocket: binary batches in (to the `peers` actor, one message
per batch) and sealed records out (the one writer drains a bounded queue, several records per
WebSocket message). Messages to the broker keep within PACE_SHARE of the rate and burst its welcome
announces (a broker closes a connection that exceeds them): past that, records wait in the
queue and leave together in the next message the rate allows. When the connection drops,
senders waiting on the queue fail with LinkDown and the link reconnects after a full-jitter
exponential backoff, reset by the next welcome.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs
import structlog
import trio
from nacl.signing import SigningKey

from meshactors.actors import Actor, cleanup_scope
from meshactors.broker.envelope import (
    RECORD_HEADER_BYTES,
    MalformedBatch,
    decode_batch,
    encode_batch,
)
from meshactors.broker.hello import build_hello, is_role
from meshactors.broker.limits import MESSAGE_BURST, MESSAGE_RATE_PER_S, TokenBucket
from meshactors.event_hub import EventHub
from meshactors.network.link_errors import LinkError, LinkErrorKind, classify
from meshactors.wire.device_id import is_device_id
from meshactors.wire.jsonlimits import BadJson, check_json

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

log = structlog.get_logger("meshactors.link")

BACKOFF_BASE = 0.25  # seconds: the first retry waits up to this long
BACKOFF_CAP = 30.0  # seconds: no retry ever waits longer
CONNECT_TIMEOUT = 10.0  # seconds for TCP + WebSocket upgrade
WELCOME_TIMEOUT = 10.0  # seconds between sending our hello and the broker's welcome
CLOSE_TIMEOUT = 2.0  # seconds for the WebSocket closing handshake
LINK_PING_INTERVAL = 20.0  # seconds between our keepalive pings to the broker
LINK_PONG_TIMEOUT = 20.0  # seconds a ping may go unanswered before the link is dropped
OUTBOUND_QUEUE = 8192  # sealed records waiting for the writer; senders wait beyond it
BATCH_MAX_RECORDS = 1024  # records joined into one WebSocket message
BATCH_IDLE_PASSES = 3  # under load: scheduler passes without a new record before a batch goes
MAX_INBOUND_MESSAGE_BYTES = 4 * 1024 * 1024  # largest message we accept from a broker
RECEIVE_BUFFER_BYTES = 64 * 1024  # bytes trio-websocket's reader asks the socket for at a time
MAX_NOTICE_CHARS = 64 * 1024  # a TEXT notice (welcome with 256 peers is ~20 KB)
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024  # if the welcome does not say
PACE_SHARE = 0.9  # of the broker's message rate and burst we use: jitter never trips its limit
LINK_ROLE = "daemon"  # the role announced when none was declared
ROLES = (LINK_ROLE, "service", "control-plane")  # the roles `daemon up --role` may declare


class LinkDown(Exception):
    """The network's broker link is not up: the frame was not sent."""


@attrs.frozen
class Welcome:
    """What a broker's welcome tells: who is present, and the limits our messages must keep."""

    peers: list[tuple[str, str]]  # (device_id, role)
    max_bytes: int  # one message
    message_rate: float = MESSAGE_RATE_PER_S  # messages per second, sustained
    message_burst: int = MESSAGE_BURST  # messages at once

    def pace(self) -> TokenBucket:
        """The bucket our messages are drawn from: PACE_SHARE of the broker's."""
        rate, burst = self.message_rate * PACE_SHARE, self.message_burst * PACE_SHARE
        return TokenBucket(rate, max(1.0, burst))


@attrs.frozen
class LinkUp:
    """The broker welcomed us; `peers` are the (device_id, role) pairs present."""

    url: str
    peers: list[tuple[str, str]]


@attrs.frozen
class LinkLost:
    """The connection dropped; the link is reconnecting."""

    reason: str


@attrs.frozen
class PresenceJoin:
    """A device joined the network at the broker."""

    device_id: str
    role: str


@attrs.frozen
class PresenceLeave:
    """A device left the network at the broker."""

    device_id: str


@attrs.frozen
class InboundRecords:
    """One batch of (sender public key, sealed bytes) records from the broker."""

    records: list[tuple[bytes, bytes]]


@attrs.frozen
class Undeliverable:
    """The broker could not deliver to this device (not in the network)."""

    device_id: str


LinkEvent = LinkUp | LinkLost | PresenceJoin | PresenceLeave | InboundRecords | Undeliverable


_Queued = tuple[bytes, bytes]  # (destination public key, sealed bytes) for the writer


class LinkEventSink(Protocol):
    """Where the link delivers what it hears: the peers actor's inbox."""

    async def send(self, event: LinkEvent, /) -> None: ...


class BrokerProtocolError(Exception):
    """The broker said something we cannot read where a welcome or notice was due."""


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
    last_error: LinkError | None = None  # why the link is not up, if it is not
    events: EventHub | None = None  # where `network_link_error` goes (none in unit tests)
    _reported: LinkError | None = None  # the error last logged and published
    _attempt: int = 0
    _next_url: int = 0
    _outbound: trio.MemorySendChannel[_Queued] | None = None
    _pace: TokenBucket = attrs.field(factory=lambda: Welcome([], 0).pace())  # messages we may send
    _cycle: trio.CancelScope | None = None

    @property
    def up(self) -> bool:
        """Whether the broker welcomed us and the connection is still open."""
        return self._outbound is not None

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
            "last_error": None if self.last_error is None else self.last_error.view(),
        }

    def send_nowait(self, to: bytes, sealed: bytes) -> bool:
        """Queue one sealed record for the writer without waiting; False when the queue is full
        (use `send`). Raises LinkDown when the link is not up."""
        try:
            self._queue().send_nowait((to, sealed))
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LinkDown(f"network {self.network}: the broker link dropped") from None
        return True

    async def send(self, to: bytes, sealed: bytes) -> None:
        """Queue one sealed record for the writer; waits while the queue is full.

        Raises LinkDown when the link is not up, or drops while this waits.
        """
        try:
            await self._queue().send((to, sealed))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise LinkDown(f"network {self.network}: the broker link dropped") from None

    def _queue(self) -> trio.MemorySendChannel[_Queued]:
        """The writer's queue; LinkDown when the link is not up."""
        if self._outbound is None:
            raise LinkDown(f"network {self.network}: the broker link is {self.state}")
        return self._outbound

    def set_brokers(self, brokers: list[str]) -> None:
        """Use a new broker list: drop the current connection and connect again at once."""
        self.brokers = list(brokers)
        self._next_url = 0
        self._attempt = 0
        if self._cycle is not None:
            self._cycle.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state = "connecting"
        task_status.started()
        try:
            while True:
                with trio.CancelScope() as self._cycle:
                    url = self.brokers[self._next_url % len(self.brokers)]
                    self.state = "connecting"
                    welcomed = await self._connect_once(url)
                    if not welcomed:
                        self.failures += 1
                        self._next_url += 1  # try the next broker in turn
                    self.state = "backoff"
                    await trio.sleep(self._backoff())
                    self._attempt += 1
        finally:
            self.state = "stopped"
            self._cycle = None

    async def _connect_once(self, url: str) -> bool:
        """One connection's life; returns whether the broker welcomed us."""
        # trio-websocket is imported by the first connection, after READY (a cold start
        # without it is ~30 ms shorter; docs/performance.md, "Cold start").
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

        welcomed = False
        try:
            async with open_websocket_url(
                url,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=CLOSE_TIMEOUT,
                max_message_size=MAX_INBOUND_MESSAGE_BYTES,
                receive_buffer_size=RECEIVE_BUFFER_BYTES,
            ) as ws:
                hello = build_hello(
                    self.signing_key, self.network, self.role, now_ms=time.time_ns() // 1_000_000
                )
                await ws.send_message(hello)
                with trio.fail_after(WELCOME_TIMEOUT):
                    welcome = parse_welcome(await ws.get_message())
                welcomed = True
                await self._serve(ws, url, welcome)
        except (
            ConnectionClosed,
            HandshakeError,
            OSError,
            trio.TooSlowError,
            BrokerProtocolError,
        ) as exc:
            self._failed(classify(exc, url, welcomed=welcomed), url)
        return welcomed

    def _backoff(self) -> float:
        """Seconds before the next attempt: full jitter, or the longest wait at once after an
        error retrying cannot heal (a wrong path, a refused hello)."""
        if self.last_error is not None and not self.last_error.heals_by_retrying:
            return BACKOFF_CAP
        return backoff_delay(self._attempt, self.rng)

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
        """Relay until the connection drops; tell `peers` it is up, and that it went down."""
        send, receive = trio.open_memory_channel[_Queued](OUTBOUND_QUEUE)
        self._attempt = 0
        self.connects += 1
        self.state, self.url, self.last_error, self._reported = "up", url, None, None
        self._outbound = send
        self._pace = welcome.pace()
        log.info("broker link up", network=self.network, url=url, peers=len(welcome.peers))
        try:
            await self.deliver.send(LinkUp(url, welcome.peers))
            async with trio.open_nursery() as nursery:
                session = nursery.cancel_scope
                nursery.start_soon(
                    self._until_closed, session, self._write, ws, receive, welcome.max_bytes
                )
                nursery.start_soon(self._until_closed, session, self._keepalive, ws)
                nursery.start_soon(self._until_closed, session, self._read, ws)
        finally:
            self._outbound, self.state = None, "backoff"
            send.close()
            self.dropped += _drain(receive)
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
            self._failed(classify(closed, self.url or "", welcomed=True), self.url or "")
        finally:
            session.cancel()

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            message = await ws.get_message()
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
            return _parse_notice(text)
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
        limit, at the pace its welcome allows."""
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
            await ws.send_message(encode_batch(batch))
            self.batches_out += 1
            self.frames_out += len(batch)

    async def _keepalive(self, ws: WebSocketConnection) -> None:
        """Close a connection whose broker stopped answering pings (a silently dead TCP path)."""
        while True:
            await trio.sleep(LINK_PING_INTERVAL)
            with trio.move_on_after(LINK_PONG_TIMEOUT) as waiting:
                await ws.ping()
            if waiting.cancelled_caught:
                error = LinkError(LinkErrorKind.TIMEOUT, "the broker did not answer a ping")
                self._failed(error, self.url or "")
                with trio.move_on_after(CLOSE_TIMEOUT):  # a write stuck on a dead path
                    await ws.aclose(1001, "pong timeout")
                return


def _drain(receive: trio.MemoryReceiveChannel[_Queued]) -> int:
    """Empty a closed queue; returns how many records it held."""
    count = 0
    while True:
        try:
            receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            receive.close()
            return count
        count += 1


def _load(text: object) -> dict[str, Any]:
    if not isinstance(text, str) or len(text) > MAX_NOTICE_CHARS:
        raise BrokerProtocolError("expected a TEXT notice")
    try:
        data = json.loads(text)
        check_json(data)  # what we read from it may reach events, the roster and clients
    except BadJson as bad:
        raise BrokerProtocolError(f"notice holds a value we cannot pass on: {bad}") from None
    except (ValueError, RecursionError):
        raise BrokerProtocolError("notice is not JSON") from None
    if not isinstance(data, dict):
        raise BrokerProtocolError("notice is not a JSON object")
    return data


def _member(entry: object) -> tuple[str, str]:
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("device_id"), str)
        and is_device_id(entry["device_id"])
        and isinstance(entry.get("role"), str)
        and is_role(entry["role"])
    ):
        return entry["device_id"], entry["role"]
    raise BrokerProtocolError("welcome lists a malformed peer")


def parse_welcome(text: object) -> Welcome:
    """The peers present and the broker's limits, from a welcome (a limit it leaves out is
    the documented default)."""
    data = _load(text)
    peers = data.get("peers")
    if data.get("type") != "welcome" or not isinstance(peers, list):
        raise BrokerProtocolError(f"expected a welcome, got {str(data.get('type'))[:40]!r}")
    limit = data.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
    if type(limit) is not int or limit <= RECORD_HEADER_BYTES:
        raise BrokerProtocolError("welcome has a bad max_message_bytes")
    rate = data.get("message_rate", MESSAGE_RATE_PER_S)
    if type(rate) not in (int, float) or not 0 < rate < float("inf"):
        raise BrokerProtocolError("welcome has a bad message_rate")
    burst = data.get("message_burst", MESSAGE_BURST)
    if type(burst) is not int or burst < 1:
        raise BrokerProtocolError("welcome has a bad message_burst")
    members = [_member(entry) for entry in peers]
    return Welcome(members, min(limit, MAX_INBOUND_MESSAGE_BYTES), float(rate), burst)


def _parse_notice(text: str) -> LinkEvent | None:
    """A presence or undeliverable notice; None for a notice type we do not know."""
    data = _load(text)
    match data.get("type"), data.get("event"):
        case "presence", "join":
            return PresenceJoin(*_member(data))
        case "presence", "leave":
            device_id = data.get("device_id")
            if isinstance(device_id, str) and is_device_id(device_id):
                return PresenceLeave(device_id)
        case "undeliverable", _:
            device_id = data.get("device_id")
            if isinstance(device_id, str) and is_device_id(device_id):
                return Undeliverable(device_id)
        case _:
            return None
    raise BrokerProtocolError("malformed notice")
