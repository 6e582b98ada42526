"""The broker: admits daemons by signed hello and relays sealed batches within one network.

One WebSocket (trio-websocket) connection is one daemon in one network. Each connection runs
in its own nursery with trio-websocket's reader task, our reader (rate limit, decode, route),
the one writer (draining a bounded outbound queue, batches joined into one message), and a
keepalive. Routing only ever looks inside the sender's own network.

With a cluster URL the broker also runs a ClusterLink (meshactors/broker/cluster.py), an actor
holding the Redis connection: members on other brokers are mirrored in `_remote` from its
presence events, envelopes for them are handed to it, and envelopes for ours come back from it.
"""

import collections
import contextlib
import secrets
from collections.abc import Mapping
from http import HTTPStatus
from typing import Final

import attrs
import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)
from wsproto.utilities import LocalProtocolError

from meshactors.broker.cluster_messages import (
    EVENT_QUEUE,
    Admit,
    AdmitResult,
    ClusterEvent,
    Control,
    Delivered,
    Depart,
    Dropped,
    Forward,
    Register,
    Resync,
    Roster,
    StateChanged,
    Unreceived,
)
from meshactors.broker.cluster_wire import Envelope, PresenceEntry, PresenceEvent
from meshactors.broker.health import ForwardingStream, PrefixedStream, answer_plain_http
from meshactors.broker.limits import (
    CONNECTION_LIMIT_RETRY_AFTER_S,
    FILES_PER_CONNECTION,
    MAX_REFUSING,
    NOTICE_BURST,
    NOTICE_RATE_PER_S,
    PRE_ADMISSION_BYTES,
    REFUSAL_LOG_INTERVAL_S,
    BrokerConfig,
    TokenBucket,
)
from meshactors.broker.nonces import NonceCache, source_of
from meshactors.clock import wall_ms
from meshactors.keepalive import PingOutcome, await_pong
from meshactors.listen import open_tcp_listeners
from meshactors.open_files import ConnectionLimit, connections_that_fit
from meshactors.socket_io import QuickSocketStream
from meshactors.wire.broker import (
    MESSAGE_TOO_BIG,
    SESSION_CLOSE_CODES,
    HelloRejected,
    MalformedBatch,
    PresenceJoin,
    PresenceLeave,
    RejectReason,
    SessionEnd,
    Undeliverable,
    VerifiedHello,
    Welcome,
    decode_batch,
    encode_batch,
    encode_notice,
    verify_hello,
)
from meshactors.wire.device_id import device_id_from_public_key, public_key_from_device_id

RECEIVE_BUFFER_BYTES: Final = 64 * 1024  # bytes trio-websocket's reader asks the socket for

_Logger = structlog.typing.FilteringBoundLogger
_log: _Logger = structlog.get_logger(__name__)


@attrs.define(eq=False)
class _AdmissionGate(ForwardingStream):
    """The stream trio-websocket reads: until `opened` (the hello admitted) it hands on at most
    `allowance` bytes, then waits, so an unauthenticated client holds at most that much of the
    broker's memory, not a whole max_message_bytes message (trio-websocket fixes a
    connection's max_message_size when it wraps the stream)."""

    allowance: int
    opened: trio.Event = attrs.field(factory=trio.Event)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.opened.is_set():
            return await self.stream.receive_some(max_bytes)
        if not self.allowance:
            await self.opened.wait()
            return await self.stream.receive_some(max_bytes)
        data = await self.stream.receive_some(min(max_bytes or self.allowance, self.allowance))
        self.allowance -= len(data)
        return data


@attrs.define(eq=False)
class _Member:
    """One admitted connection: its identity in a network and its bounded outbound queue."""

    network: str
    device_id: str
    public_key: bytes
    role: str
    ts_ms: int  # the hello's timestamp: across brokers the newer connection of a device wins
    max_queued_bytes: int
    outbox: trio.MemorySendChannel[str | bytes]
    queued: trio.MemoryReceiveChannel[str | bytes]
    messages: TokenBucket
    notices: TokenBucket
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    ended: SessionEnd | None = None
    queued_bytes: int = 0
    progress: int = 0  # messages read from it and written to it: a keepalive's sign of life

    def offer(self, message: str | bytes) -> bool:
        """Queue a message for the member's writer without blocking; a receiver that has fallen
        behind is ended."""
        if self.ended is not None:
            return False
        if self.queued_bytes + len(message) > self.max_queued_bytes:
            self.end(SessionEnd.SLOW_CONSUMER)
            return False
        try:
            self.outbox.send_nowait(message)
        except trio.WouldBlock:
            self.end(SessionEnd.SLOW_CONSUMER)
            return False
        self.queued_bytes += len(message)
        return True

    def end(self, reason: SessionEnd) -> None:
        """End the session (first reason wins); its handler departs and closes the socket."""
        if self.ended is None:
            self.ended = reason
            self.scope.cancel()


@attrs.define
class Broker:
    """A WebSocket relay routing sealed frames between the daemons of each network."""

    config: BrokerConfig = attrs.field(factory=BrokerConfig)
    cluster_url: str | None = None  # redis://HOST:PORT/DB: route across brokers through it
    _networks: dict[str, dict[bytes, _Member]] = attrs.field(init=False, factory=dict)
    # members on other brokers, kept for each network that has members here
    _remote: dict[str, dict[bytes, tuple[str, PresenceEntry]]] = attrs.field(
        init=False, factory=dict
    )
    _broker_id: str = attrs.field(init=False, factory=lambda: secrets.token_hex(8))
    _state: str = attrs.field(init=False, default="standalone")  # what routing and admits use
    # what health, figures and waiters see: "connected" only once the resync registered our
    # members again, so a peer that reads presence then finds them
    _shown_state: str = attrs.field(init=False, default="standalone")
    _state_changed: trio.Event = attrs.field(init=False, factory=trio.Event)
    # admissions waiting for Redis by network, and the newest presence event (join or leave)
    # heard meanwhile of each device: a roster read by an admission may be older than the
    # presence events that overtook its answer
    _admitting: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _heard: dict[str, dict[str, PresenceEntry]] = attrs.field(init=False, factory=dict)
    _control: trio.MemorySendChannel[Control] | None = attrs.field(init=False, default=None)
    _forwards: trio.MemorySendChannel[Forward] | None = attrs.field(init=False, default=None)
    _nonces: NonceCache = attrs.field(init=False)
    _counts: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _connections: int = attrs.field(init=False, default=0)
    # connections not yet admitted by a hello, by source (the client's address): each holds a
    # place under max_connections, at most max_unhelloed_per_address of each source...
    _unhelloed: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    # ...and those that came past it, which hold no place: each is refused with a 503
    _over_address_limit: int = attrs.field(init=False, default=0)
    # config.max_connections, or fewer where the open-file limit holds less (set by serve)
    _max_connections: int = attrs.field(
        init=False, default=attrs.Factory(lambda self: self.config.max_connections, takes_self=True)
    )
    _listen: str = attrs.field(init=False, default="")
    _admissions: set[trio.CancelScope] = attrs.field(init=False, factory=set)
    _stopping: bool = attrs.field(init=False, default=False)  # _stop ran: nothing new joins
    # one `connection_refused` line per REFUSAL_LOG_INTERVAL_S for each reason (a full broker
    # refuses a fleet)
    _refusal_logs: dict[str, TokenBucket] = attrs.field(init=False, factory=dict)

    @_nonces.default
    def _replay_memory(self) -> NonceCache:
        """The nonce memory, as large as the config says."""
        return NonceCache(self.config.nonce_entries)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind host:port (0 picks a free port), report the bound port, serve until cancelled.

        On cancellation it stops accepting and closes every session with 1001 going_away,
        waiting at most close_timeout for the closing handshakes.
        """
        (self._max_connections,) = connections_that_fit(
            ConnectionLimit("max_connections", self.config.max_connections, FILES_PER_CONNECTION)
        )
        listeners = await open_tcp_listeners(host, port)
        bound_port: int = listeners[0].socket.getsockname()[1]
        lifetime, accepting = trio.CancelScope(shield=True), trio.CancelScope()
        async with trio.open_nursery() as nursery:
            try:
                if self.cluster_url is not None:
                    self._start_cluster(nursery, self.cluster_url)
                await nursery.start(self._accept, listeners, lifetime, accepting)
                self._listen = f"{host}:{bound_port}"
                _log.info("broker_listening", listen=self._listen)
                task_status.started(bound_port)
                await trio.sleep_forever()
            finally:
                self._stop(lifetime, accepting)

    def _start_cluster(self, nursery: trio.Nursery, url: str) -> None:
        """Start the Redis link and the task that applies what it reports."""
        from meshactors.broker.cluster import ClusterLink  # coredis: only for a cluster

        self._control, control = trio.open_memory_channel[Control](self.config.max_connections + 1)
        self._forwards, forwards = trio.open_memory_channel[Forward](
            self.config.cluster_forward_queue
        )
        events, reported = trio.open_memory_channel[ClusterEvent](EVENT_QUEUE)
        self._state = self._shown_state = "starting"  # until Redis answers
        link = ClusterLink(
            url,
            self._broker_id,
            self.config.cluster_heartbeat,
            self.config.cluster_ttl,
            control,
            forwards,
            events,
        )
        nursery.start_soon(link.run)
        nursery.start_soon(self._follow_cluster, reported)

    async def reach_state(self, state: str) -> None:
        """Wait until the cluster state is `state` (standalone, starting, connected or
        degraded)."""
        while self._shown_state != state:
            await self._state_changed.wait()

    def health(self) -> dict[str, object]:
        """What `GET /health` answers: cluster state, sizes, routed and dropped frames, and
        every counter (`figures`: refusals and closes by reason) for a broker run on its own."""
        counts = self._counts
        return {
            "cluster": self._shown_state,
            "broker_id": self._broker_id,
            "connections": self._connections,
            "max_connections": self._max_connections,
            "members": sum(len(members) for members in self._networks.values()),
            "networks": len(self._networks),
            "routed": counts["frames_relayed"] + counts["frames_forwarded"],
            "dropped": counts["frames_dropped"] + counts["cluster_undeliverable"],
            "figures": self._counters(),
        }

    def figures(self) -> dict[str, int | str]:
        """Flat counters for `inspect`: sizes, traffic, and rejections and closes by reason."""
        figures: dict[str, int | str] = {
            "listen": self._listen,
            "connections": self._connections,
            "members": sum(len(members) for members in self._networks.values()),
            "networks": len(self._networks),
            "nonces_remembered": len(self._nonces),
            "nonces_evicted": self._nonces.evicted,
            "cluster": self._shown_state,
        }
        figures.update(self._counters())
        return figures

    def _counters(self) -> dict[str, int]:
        """Every counter by name, zero or not: traffic, and refusals and closes by reason."""
        counted = ["messages_relayed", "frames_relayed", "frames_dropped", "connection_errors"]
        counted += ["frames_forwarded", "cluster_delivered", "cluster_undeliverable"]
        counted += ["cluster_forwards_lost", "cluster_bad_messages", "cluster_departs_lost"]
        counted += ["health_requests", "rejected_not_websocket"]
        counted += ["rejected_connection_limit", "rejected_address_limit"]
        counted += ["closed_past_refusals", "rejected_path", "rejected_bad_request"]
        counted += [f"rejected_hello_{reason}" for reason in RejectReason]
        counted += [f"closed_{reason}" for reason in SessionEnd]
        return {key: self._counts[key] for key in counted}

    async def _accept(
        self,
        listeners: list[trio.SocketListener],
        lifetime: trio.CancelScope,
        accepting: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        """Accept connections until `accepting` is cancelled.

        `lifetime` shields the connections (and their WebSocket readers) from the broker's
        own cancellation so that sessions can finish their closing handshake; _stop bounds it.
        """
        with lifetime:
            async with trio.open_nursery() as connections:
                task_status.started()
                with accepting:
                    await trio.serve_listeners(
                        self._connection, listeners, handler_nursery=connections
                    )

    def _stop(self, lifetime: trio.CancelScope, accepting: trio.CancelScope) -> None:
        """Stop accepting, drop connections still in their handshake, end every session; a
        connection handled, or a hello admitted, after this ends at once too."""
        self._stopping = True
        lifetime.deadline = trio.current_time() + self.config.close_timeout
        accepting.cancel()
        for admission in self._admissions:
            admission.cancel()
        for members in self._networks.values():
            for member in members.values():
                member.end(SessionEnd.GOING_AWAY)

    async def _connection(self, stream: trio.SocketStream) -> None:
        """Own one TCP connection in its own nursery: nothing that fails here reaches another.

        The stream is ours, not trio-websocket's, so it is closed when the connection ends even
        where trio-websocket leaves it open (see docs/architecture.md, the WebSocket layer).
        """
        remote, source = _peer(stream)
        over_address_limit = self._unhelloed[source] >= self.config.max_unhelloed_per_address
        if self._no_room_to_refuse(over_address_limit):
            self._counts["closed_past_refusals"] += 1  # unanswered: no file to spare for it
            await trio.aclose_forcefully(stream)
            return
        log = _log.bind(remote=remote)
        admission = trio.CancelScope()  # cancelled by _stop until a session is running
        self._admissions.add(admission)
        if self._stopping:  # accepted before the stop, handled after it: dropped at once
            admission.cancel()
        self._connections += 1
        if over_address_limit:
            self._over_address_limit += 1
        else:
            self._unhelloed[source] += 1
        unhelloed = not over_address_limit
        try:
            async with stream, trio.open_nursery() as nursery:
                try:
                    admitted = None
                    with admission:
                        admitted = await self._open_session(
                            nursery, stream, source, over_address_limit, log
                        )
                    self._admissions.discard(admission)
                    if admitted is not None:
                        self._said_hello(source)
                        unhelloed = False
                        await self._run_session(*admitted, log)
                finally:
                    nursery.cancel_scope.cancel()  # trio-websocket's reader, however we end
        except* ConnectionClosed:
            pass  # the client vanished during a handshake or a send; nothing to clean up
        except* LocalProtocolError:
            pass  # trio-websocket's reader after our close began: an oversize message, or a
            # ping it answers on the closing connection (python-trio/trio-websocket#184)
        except* Exception:
            self._counts["connection_errors"] += 1
            log.exception("connection_failed")
        finally:
            self._admissions.discard(admission)
            self._connections -= 1
            if over_address_limit:
                self._over_address_limit -= 1
            elif unhelloed:
                self._said_hello(source)

    def _no_room_to_refuse(self, over_address_limit: bool) -> bool:
        """Whether a new connection is one to refuse (past max_connections, or over its
        address's limit) and MAX_REFUSING others are being refused already: it is then closed
        unanswered."""
        placed = self._connections - self._over_address_limit
        if not over_address_limit and placed < self._max_connections:
            return False  # it takes a place
        refusing = max(0, placed - self._max_connections) + self._over_address_limit
        return refusing >= MAX_REFUSING

    def _said_hello(self, source: str) -> None:
        """A connection from `source` no longer counts against its address's limit: its hello
        was admitted, or it ended."""
        self._unhelloed[source] -= 1
        if not self._unhelloed[source]:
            del self._unhelloed[source]

    async def _open_session(
        self,
        nursery: trio.Nursery,
        stream: trio.SocketStream,
        source: str,
        over_address_limit: bool,
        log: _Logger,
    ) -> tuple[WebSocketConnection, _Member] | None:
        """Upgrade (or refuse: `over_address_limit`, among others) the HTTP request, then admit
        its hello; None when refused.

        Until the hello is admitted the connection is read through an _AdmissionGate."""
        ws: WebSocketConnection | None = None
        with trio.move_on_after(self.config.handshake_timeout):
            try:  # a message relayed a scheduler pass shorter (socket_io)
                handed_on = await answer_plain_http(QuickSocketStream(stream), self.health)
            except trio.BrokenResourceError:  # a reset before the request is whole (a port
                return None  # scanner's, say) or as it is answered; nothing wrong with the broker
            if not isinstance(handed_on, PrefixedStream):  # answered (/health, or refused), or
                if handed_on is not None:  # nothing came to answer
                    self._counts[handed_on] += 1
                return None
            # the handshake takes the upgrade in its first read: it was read whole and checked
            gate = _AdmissionGate(handed_on, PRE_ADMISSION_BYTES)
            request = await wrap_server_stream(
                nursery,
                gate,
                max_message_size=self.config.max_message_bytes,
                receive_buffer_size=RECEIVE_BUFFER_BYTES,
            )
            ws = await self._upgrade(request, over_address_limit, log)
        if ws is None:
            return None
        member = await self._admit(nursery, ws, source, log)
        if member is None:
            return None
        gate.opened.set()  # admitted: its messages may now be max_message_bytes long
        return ws, member

    async def _upgrade(
        self, request: WebSocketRequest, over_address_limit: bool, log: _Logger
    ) -> WebSocketConnection | None:
        """Answer the HTTP upgrade: the WebSocket, or None after refusing the request."""
        if over_address_limit:
            limit = self.config.max_unhelloed_per_address
            line = f"too many connections from this address before their hello ({limit})"
            await self._refuse(request, "address_limit", line, log, max_unhelloed_per_address=limit)
            return None
        if self._connections - self._over_address_limit > (limit := self._max_connections):
            line = f"the broker is at its connection limit ({limit})"
            await self._refuse(request, "connection_limit", line, log, max_connections=limit)
            return None
        return await request.accept()

    async def _refuse(
        self, request: WebSocketRequest, reason: str, line: str, log: _Logger, **limit: int
    ) -> None:
        """Answer the upgrade 503 with Retry-After and `line` (naming the limit), count it in
        `rejected_<reason>`, and say so (once per REFUSAL_LOG_INTERVAL_S for each reason)."""
        counter = f"rejected_{reason}"
        self._counts[counter] += 1
        said = self._refusal_logs.setdefault(reason, TokenBucket(1 / REFUSAL_LOG_INTERVAL_S, 1))
        if said.take(trio.current_time()):
            log.warning("connection_refused", reason=reason, **limit, refused=self._counts[counter])
        await request.reject(
            HTTPStatus.SERVICE_UNAVAILABLE,
            extra_headers=[
                (b"retry-after", str(CONNECTION_LIMIT_RETRY_AFTER_S).encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
            ],
            body=f"{line}: retry later\n".encode(),
        )

    async def _admit(
        self, nursery: trio.Nursery, ws: WebSocketConnection, source: str, log: _Logger
    ) -> _Member | None:
        """Check the hello (its nonce counted against `source`, the client's address), then join
        its network; on rejection close the socket and return None. A Redis admission that
        outlasts admission_timeout runs on in `nursery`."""
        network: str | None = None
        decided = trio.Event()  # the hello joined or was refused: a late answer waits for it
        try:
            try:
                hello = await self._receive_hello(ws)
                network = hello.network
                self._nonces.admit(hello, source=source, now_ms=wall_ms())
                status = await self._admit_cluster(nursery, hello, decided)
                members = self._networks.get(hello.network, {})
                remote = self._remote.get(hello.network, {})
                present = len(members) + len(remote.keys() - members.keys())
                if (
                    status not in ("ok", "older")
                    and present >= self.config.max_peers
                    and hello.public_key not in members
                    and hello.public_key not in remote
                ):
                    raise HelloRejected(RejectReason.NETWORK_FULL)
            except HelloRejected as rejected:
                self._counts[f"rejected_hello_{rejected.reason}"] += 1
                log.info("hello_rejected", reason=str(rejected.reason), detail=rejected.detail)
                with trio.move_on_after(self.config.close_timeout, shield=True):
                    await ws.aclose(rejected.close_code, rejected.reason)
                return None
            if status == "older" or self._stopping:
                # a newer connection of the device holds its place (keep it), or the hello went
                # on after _stop ended every member (its answer came as the stop began): closed
                # as a member would be
                reason = SessionEnd.REPLACED if status == "older" else SessionEnd.GOING_AWAY
                self._counts[f"closed_{reason}"] += 1
                with trio.move_on_after(self.config.close_timeout, shield=True):
                    await ws.aclose(SESSION_CLOSE_CODES[reason], reason)
                return None
            return self._join(hello)
        finally:
            decided.set()
            if network is not None:
                self._forget_unused_mirror(network)

    async def _admit_cluster(
        self, nursery: trio.Nursery, hello: VerifiedHello, decided: trio.Event
    ) -> str:
        """Record the nonce and the member on Redis (atomically, with the cluster-wide peer
        limit); return the link's status, `standalone` without a cluster. An answer that has
        not come within admission_timeout is awaited in `nursery` and the hello goes on as in
        an outage (`unavailable`). An answer on time is applied and the hello joined (or
        refused) in the same step: nothing can drop the roster it mirrored in between."""
        if self._control is None:
            return "standalone"
        network = hello.network
        entry = PresenceEntry(self._broker_id, hello.role, hello.ts_ms)
        reply, answer = trio.open_memory_channel[AdmitResult](1)
        heard = self._watch(network)
        result, answered, queued = AdmitResult("unavailable"), False, False
        try:
            with trio.move_on_after(self.config.admission_timeout):
                queued = await self._ask(Admit(hello, entry, self.config.max_peers, reply))
                result, answered = await _received(answer), True
        finally:
            if answered:
                answer.close()
                self._unwatch(network)
            else:  # however the wait ended, the answer is squared with what becomes of the hello
                nursery.start_soon(
                    self._late_admission, hello, entry, answer, heard, decided, queued
                )
        if not answered:
            _log.info("cluster_admit_timeout", device=hello.device_id)
        if result.status == "ok":
            self._take_roster(network, result.roster, heard)
        if result.status == "replayed":
            raise HelloRejected(RejectReason.REPLAYED_NONCE, "seen by the cluster")
        if result.status == "full":
            raise HelloRejected(RejectReason.NETWORK_FULL)
        return result.status

    async def _ask(self, command: Admit | Register | Resync) -> bool:
        """Queue a command the broker waits on, and say whether it was queued. One that was not
        (the wait was cancelled, or the link stopped with the broker) has its reply closed: no
        answer is coming, and its waiter takes that as Redis unavailable."""
        assert self._control is not None
        try:
            await self._control.send(command)
        except trio.BrokenResourceError:
            command.reply.close()
            return False
        except trio.Cancelled:
            command.reply.close()
            raise
        return True

    def _watch(self, network: str) -> dict[str, PresenceEntry]:
        """Keep mirroring `network` for a hello being admitted into it, and return the presence
        heard in it from now on (a roster read by the admission may be older); _unwatch ends it."""
        self._remote.setdefault(network, {})
        self._admitting[network] += 1
        return self._heard.setdefault(network, {})

    def _unwatch(self, network: str) -> None:
        """End one _watch of `network` (its mirror is then kept only for members here)."""
        self._admitting[network] -= 1
        if not self._admitting[network]:
            del self._admitting[network], self._heard[network]

    async def _late_admission(
        self,
        hello: VerifiedHello,
        entry: PresenceEntry,
        answer: trio.MemoryReceiveChannel[AdmitResult],
        heard: Mapping[str, PresenceEntry],
        decided: trio.Event,
        told: bool,
    ) -> None:
        """Await the answer to an admission the handshake stopped waiting for, as long as the
        connection lasts, then make Redis hold what became of the hello: its entry while it is
        a member here, none once it is not (a Depart behind the Admit or the Register; none
        when neither reached the link's queue, `told` false for the Admit: Redis never heard of
        the hello).

        Once the hello joined or was refused, a member here whose admission did not record it
        (`full`, `replayed`, or Redis went away or never got the Admit) is registered all the
        same, as a resync would: its connection is open and must be reachable (the answer is
        then that of the registration)."""
        result = AdmitResult("unavailable")
        try:
            with answer:
                result = await _received(answer)
            await decided.wait()
            if result.status not in ("ok", "older") and self._holder(hello, entry) is not None:
                told = True  # the Register may reach Redis even when its answer does not
                result = await self._register(hello, entry)
        finally:
            await self._settle(hello, entry, result, heard, told)
            self._unwatch(hello.network)
            self._forget_unused_mirror(hello.network)

    async def _register(self, hello: VerifiedHello, entry: PresenceEntry) -> AdmitResult:
        """Register the member `hello` made here; `ok` with the network's roster, or
        `unavailable` when Redis went away (the resync after registers it)."""
        reply, roster = trio.open_memory_channel[Roster | None](1)
        await self._ask(Register(hello.network, hello.device_id, entry, reply))
        async with roster:
            with contextlib.suppress(trio.EndOfChannel):
                taken = await roster.receive()
                if taken is not None:
                    return AdmitResult("ok", taken)
        return AdmitResult("unavailable")

    async def _settle(
        self,
        hello: VerifiedHello,
        entry: PresenceEntry,
        result: AdmitResult,
        heard: Mapping[str, PresenceEntry],
        told: bool,
    ) -> None:
        """Square Redis and the mirror with what became of a hello the handshake stopped
        waiting for (`result` is the late answer, `unavailable` if none came; `told`: whether
        a command of the hello reached the link's queue)."""
        member = self._holder(hello, entry)
        if member is None:  # refused here, or gone already: its entry must not stay
            if told:
                await self._depart_admission(hello, entry)
        elif result.status == "ok":
            self._take_roster(hello.network, result.roster, heard)
        elif result.status == "older":  # a newer connection of the device holds its place
            member.end(SessionEnd.REPLACED)

    async def _depart_admission(self, hello: VerifiedHello, entry: PresenceEntry) -> None:
        """Queue the Depart that removes what an admission may have written, waiting (even as
        the connection ends) up to admission_timeout for room behind a backed-up queue: a leave
        dropped here would leave the entry on Redis until a resync or this broker's reap. A
        link that stopped with the broker refuses it at once: its leave removes every entry of
        ours."""
        assert self._control is not None
        with trio.move_on_after(self.config.admission_timeout, shield=True):
            with contextlib.suppress(trio.BrokenResourceError):
                await self._control.send(Depart(hello.network, hello.device_id, entry))
            return
        self._counts["cluster_departs_lost"] += 1

    def _holder(self, hello: VerifiedHello, entry: PresenceEntry) -> _Member | None:
        """The member here that `hello` made, if it still is one."""
        member = self._networks.get(hello.network, {}).get(hello.public_key)
        return member if member is not None and self._entry(member) == entry else None

    def _entry(self, member: _Member) -> PresenceEntry:
        """What Redis holds for a member of this broker."""
        return PresenceEntry(self._broker_id, member.role, member.ts_ms)

    def _take_roster(
        self, network: str, roster: Roster, heard: Mapping[str, PresenceEntry]
    ) -> None:
        """Mirror the other brokers' members an admission's roster lists, except a device a
        presence event heard while the admission waited tells as new or newer of (the roster
        was read before that event: the device has since left or moved)."""
        for device_id, entry in roster.items():
            seen = heard.get(device_id)
            if entry.broker != self._broker_id and (seen is None or _newer(entry, seen)):
                self._presence(PresenceEvent(True, network, device_id, entry))

    def _forget_unused_mirror(self, network: str) -> None:
        """Stop mirroring a network with no member here and no hello being admitted into it."""
        if network not in self._networks.keys() | self._admitting:
            self._remote.pop(network, None)

    async def _receive_hello(self, ws: WebSocketConnection) -> VerifiedHello:
        with trio.move_on_after(self.config.handshake_timeout):
            first = await ws.get_message()
            if isinstance(first, bytes):
                raise HelloRejected(RejectReason.MALFORMED_HELLO, "binary message before hello")
            return verify_hello(first, now_ms=wall_ms())
        raise HelloRejected(RejectReason.HELLO_TIMEOUT)

    def _join(self, hello: VerifiedHello) -> _Member:
        """Register the member (replacing an older connection of its device) and announce it."""
        outbox, queued = trio.open_memory_channel[str | bytes](self.config.outbound_queue_messages)
        member = _Member(
            network=hello.network,
            device_id=hello.device_id,
            public_key=hello.public_key,
            role=hello.role,
            ts_ms=hello.ts_ms,
            max_queued_bytes=self.config.outbound_queue_bytes,
            outbox=outbox,
            queued=queued,
            messages=TokenBucket(self.config.message_rate, self.config.message_burst),
            notices=TokenBucket(NOTICE_RATE_PER_S, NOTICE_BURST),
        )
        members = self._networks.setdefault(hello.network, {})
        previous = members.pop(hello.public_key, None)
        if previous is not None:
            previous.end(SessionEnd.REPLACED)
            self._broadcast(members, encode_notice(PresenceLeave(hello.device_id)))
        remote = self._remote.setdefault(hello.network, {}) if self._control else {}
        if remote.pop(hello.public_key, None) is not None:  # it moved here from another broker
            self._broadcast(members, encode_notice(PresenceLeave(hello.device_id)))
        peers = [(peer.device_id, peer.role) for peer in members.values()]
        peers += [(device_id, entry.role) for device_id, entry in remote.values()]
        welcome = Welcome(
            peers=peers,
            max_message_bytes=self.config.max_message_bytes,
            message_rate=self.config.message_rate,
            message_burst=self.config.message_burst,
        )
        member.offer(encode_notice(welcome))
        self._broadcast(members, encode_notice(PresenceJoin(hello.device_id, hello.role)))
        members[hello.public_key] = member
        return member

    def _depart(self, member: _Member) -> None:
        """Unregister the member if it still holds its slot, and tell the others it left."""
        members = self._networks.get(member.network, {})
        if members.get(member.public_key) is not member:
            return
        del members[member.public_key]
        if not members:
            del self._networks[member.network]
            self._forget_unused_mirror(member.network)  # a hello about to join keeps it
        self._broadcast(members, encode_notice(PresenceLeave(member.device_id)))
        self._depart_cluster(member.network, member.device_id, self._entry(member))

    def _depart_cluster(self, network: str, device_id: str, entry: PresenceEntry) -> None:
        """Remove our entry from Redis (if it is still ours) through the link."""
        if self._control is None:
            return
        try:
            self._control.send_nowait(Depart(network, device_id, entry))
        except trio.WouldBlock:
            # the entry stays until a resync (after an outage), the device's next connection,
            # or the reap of this broker once it is dead
            self._counts["cluster_departs_lost"] += 1
        except trio.BrokenResourceError:
            pass  # the link stopped with the broker: its leave removes every entry of ours

    async def _run_session(self, ws: WebSocketConnection, member: _Member, log: _Logger) -> None:
        log = log.bind(network=member.network, device=member.device_id)
        log.info("member_joined", role=member.role)
        try:
            with member.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_out, ws, member)
                    nursery.start_soon(self._pump_in, ws, member)
                    nursery.start_soon(self._keepalive, ws, member)
        finally:
            self._depart(member)
            reason = member.ended or SessionEnd.GOING_AWAY
            self._counts[f"closed_{reason}"] += 1
            log.info("member_left", reason=str(reason))
            with trio.move_on_after(self.config.close_timeout, shield=True):
                await ws.aclose(SESSION_CLOSE_CODES[reason], reason)

    async def _pump_in(self, ws: WebSocketConnection, member: _Member) -> None:
        """Read the member's batches, enforce its message rate, and route them."""
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                member.end(_closed_by_peer(ws))
                return
            member.progress += 1
            if not member.messages.take(trio.current_time()):
                member.end(SessionEnd.RATE_LIMITED)
                return
            if isinstance(message, str):
                member.end(SessionEnd.UNEXPECTED_TEXT)
                return
            try:
                records = decode_batch(message)
            except MalformedBatch:
                member.end(SessionEnd.MALFORMED_BATCH)
                return
            for forward in self._route(member, records):
                assert self._forwards is not None
                await self._forwards.send(forward)  # the link is behind: this sender waits

    async def _pump_out(self, ws: WebSocketConnection, member: _Member) -> None:
        """The member's one writer: each message joins the batches queued behind it (up to
        max_message_bytes) into one WebSocket message; notices go one each, in order. A message
        not taken within send_timeout ends the member."""
        carry: str | bytes | None = None
        while True:
            first = carry if carry is not None else await member.queued.receive()
            carry = None
            message, size = first, len(first)
            if isinstance(first, bytes):
                parts = [first]
                while True:
                    try:
                        queued = member.queued.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if (
                        isinstance(queued, str)
                        or size + len(queued) > self.config.max_message_bytes
                    ):
                        carry = queued
                        break
                    parts.append(queued)
                    size += len(queued)
                message = b"".join(parts)  # batches are record lists: joined, they are one batch
            with trio.move_on_after(self.config.send_timeout) as stalled:
                try:
                    await ws.send_message(message)
                except ConnectionClosed:
                    member.end(_closed_by_peer(ws))
                    return
            if stalled.cancelled_caught:  # it is not reading: its being heard does not help
                member.end(SessionEnd.SLOW_CONSUMER)
                return
            member.queued_bytes -= size
            member.progress += 1

    async def _keepalive(self, ws: WebSocketConnection, member: _Member) -> None:
        """Ping every interval; end the session when a pong deadline passes in which the member
        neither answered nor read or sent anything (a member busy with a backlog stays), or
        when the pong ceiling passes unanswered (a stopped member's buffer takes our writes)."""
        deadline, ceiling = self.config.pong_timeout, self.config.pong_ceiling
        while True:
            await trio.sleep(self.config.ping_interval)
            try:
                outcome = await await_pong(ws.ping, lambda: member.progress, deadline, ceiling)
            except ConnectionClosed:
                member.end(_closed_by_peer(ws))
                return
            if outcome is not PingOutcome.ANSWERED:
                member.end(SessionEnd.PONG_TIMEOUT)
                return

    def _route(self, sender: _Member, records: list[tuple[bytes, bytes]]) -> list[Forward]:
        """Give each destination in the sender's network one re-batched message `from` it;
        return the forwards for other brokers that the link's full queue could not take."""
        waiting: list[Forward] = []
        if sender.ended is not None:
            return waiting  # a replaced or evicted session relays nothing more
        members = self._networks.get(sender.network, {})
        by_destination: dict[bytes, list[tuple[bytes, bytes]]] = {}
        for to, sealed in records:
            by_destination.setdefault(to, []).append((sender.public_key, sealed))
        for to, relayed in by_destination.items():
            destination = members.get(to)
            if destination is not None and destination.offer(encode_batch(relayed)):
                self._counts["messages_relayed"] += 1
                self._counts["frames_relayed"] += len(relayed)
                continue
            forward = self._forward(sender, to, relayed) if destination is None else None
            if forward is not None:
                self._counts["frames_forwarded"] += len(relayed)
                try:
                    assert self._forwards is not None
                    self._forwards.send_nowait(forward)
                except trio.WouldBlock:
                    waiting.append(forward)
                continue
            self._counts["frames_dropped"] += len(relayed)
            _tell_undeliverable(sender, to)
        return waiting

    def _forward(
        self, sender: _Member, to: bytes, relayed: list[tuple[bytes, bytes]]
    ) -> Forward | None:
        """The forward of a batch for a member on another broker; None when it cannot go
        (not a member anywhere we know of, or Redis is down)."""
        network = sender.network
        remote = self._remote.get(network, {}).get(to)
        if remote is None or self._forwards is None or self._state != "connected":
            return None
        envelope = Envelope(network, to, encode_batch(relayed))
        return Forward(remote[1].broker, envelope, sender.public_key)

    async def _follow_cluster(self, reported: trio.MemoryReceiveChannel[ClusterEvent]) -> None:
        """Apply what the link reports: its state, other brokers' presence, envelopes."""
        async for event in reported:
            match event:
                case StateChanged(state=state):
                    self._state = state  # admits and forwards use Redis again at once
                    if state == "connected":
                        await self._resync()
                    else:  # members of other brokers cannot be reached: they left, for now
                        for network in list(self._remote):
                            self._apply_roster(network, {})
                    if state != self._shown_state:
                        say = _log.warning if state == "degraded" else _log.info
                        say("cluster_state", state=state, broker_id=self._broker_id)
                        self._shown_state = state
                        self._state_changed.set()
                        self._state_changed = trio.Event()
                case PresenceEvent():
                    self._presence(event)
                case Delivered(envelopes=envelopes):
                    for envelope in envelopes:
                        member = self._networks.get(envelope.network, {}).get(envelope.to)
                        delivered = member is not None and member.offer(envelope.batch)
                        self._counts[
                            "cluster_delivered" if delivered else "cluster_undeliverable"
                        ] += 1
                case Unreceived(forwards=forwards):
                    for forward in forwards:  # published to the inbox of a broker gone
                        self._counts["cluster_undeliverable"] += 1
                        members = self._networks.get(forward.envelope.network, {})
                        sender = members.get(forward.sender)
                        if sender is not None:
                            _tell_undeliverable(sender, forward.envelope.to)
                case Dropped(what=what):
                    self._counts[what] += 1

    async def _resync(self) -> None:
        """After (re)connecting: register every local member again and take the rosters."""
        members = [
            (member.network, member.device_id, self._entry(member))
            for network in self._networks.values()
            for member in network.values()
        ]
        reply, answer = trio.open_memory_channel[dict[str, Roster] | None](1)
        await self._ask(Resync(members, reply))
        async with answer:
            try:
                rosters = await answer.receive()
            except trio.EndOfChannel:
                return  # Redis went away again (the next connect resyncs), or the link stopped
        for network, roster in (rosters or {}).items():
            if network in self._remote:
                self._apply_roster(network, roster)

    def _apply_roster(self, network: str, roster: Roster) -> None:
        """Make the mirror of `network` the roster Redis holds, telling local members."""
        mirror = self._remote.get(network, {})
        theirs = {
            public_key_from_device_id(device_id): (device_id, entry)
            for device_id, entry in roster.items()
            if entry.broker != self._broker_id
        }
        for public_key in mirror.keys() - theirs.keys():
            device_id, entry = mirror[public_key]
            self._presence(PresenceEvent(False, network, device_id, entry))
        for device_id, entry in theirs.values():
            self._presence(PresenceEvent(True, network, device_id, entry))

    def _presence(self, event: PresenceEvent) -> None:
        """A member of another broker joined or left a network we have members in."""
        network, device_id, entry = event.network, event.device_id, event.entry
        mirror = self._remote.get(network)
        if entry.broker == self._broker_id:
            return
        heard = self._heard.get(network)
        if heard is not None and (device_id not in heard or _newer(entry, heard[device_id])):
            heard[device_id] = entry
        if mirror is None:
            return
        members = self._networks.get(network, {})
        public_key = public_key_from_device_id(device_id)
        known = mirror.get(public_key)
        if not event.joined:
            if known is not None and known[1] == entry:
                del mirror[public_key]
                self._broadcast(members, encode_notice(PresenceLeave(device_id)))
            return
        local = members.get(public_key)
        if local is not None:
            if not _newer(entry, self._entry(local)):
                return  # ours is the newer connection: the other broker closes its own
            del members[public_key]
            local.end(SessionEnd.REPLACED)
            if not members:  # its last member here: mirror on only for a hello being admitted
                del self._networks[network]
                self._forget_unused_mirror(network)
                if network not in self._remote:
                    return
            self._broadcast(members, encode_notice(PresenceLeave(device_id)))
        if known == (device_id, entry):
            return
        if known is not None:
            self._broadcast(members, encode_notice(PresenceLeave(device_id)))
        mirror[public_key] = (device_id, entry)
        self._broadcast(members, encode_notice(PresenceJoin(device_id, entry.role)))

    @staticmethod
    def _broadcast(members: Mapping[bytes, _Member], notice: str) -> None:
        for member in members.values():
            member.offer(notice)


async def _received(answer: trio.MemoryReceiveChannel[AdmitResult]) -> AdmitResult:
    """The link's answer to an admission; `unavailable` when it lost Redis meanwhile."""
    try:
        return await answer.receive()
    except trio.EndOfChannel:
        return AdmitResult("unavailable")


def _newer(entry: PresenceEntry, than: PresenceEntry) -> bool:
    """Whether `entry` is a newer connection than `than`: the newer hello, then the larger
    broker id (docs/protocol.md, "Presence")."""
    return (entry.ts_ms, entry.broker) > (than.ts_ms, than.broker)


def _tell_undeliverable(sender: _Member, to: bytes) -> None:
    """Tell a member that records it sent to `to` found nobody (rate-limited per connection)."""
    if sender.notices.take(trio.current_time()):
        sender.offer(encode_notice(Undeliverable(device_id_from_public_key(to))))


def _closed_by_peer(ws: WebSocketConnection) -> SessionEnd:
    """Name a close the broker did not start: oversize (1009, by trio-websocket) or the
    client's."""
    if ws.closed is not None and ws.closed.code == MESSAGE_TOO_BIG:
        return SessionEnd.MESSAGE_TOO_BIG
    return SessionEnd.CLIENT_CLOSED


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    """The client's `host:port` (for the log) and the source its hellos are counted against."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "unknown", "unknown"  # already reset by the peer
    return f"{host}:{port}", source_of(host)
