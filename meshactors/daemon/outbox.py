"""The `outbox` actor: drains durable sends to active peers and stores peers' messages.

Accepting: the `send` op hands each run of sends to this actor (`accept`), which accepts it in
one store call and claims at once the deliveries to active peers with room in their window
and nothing queued before them (store.outbox.accept_many's `room`): those go out without a pass.
At most MAX_ACCEPTING runs are being accepted at once; the rest wait in the inbox, and one
that waited for a place reads the active peers again (they came or went meanwhile).

Sending: each pass claims due deliveries to active peers in one store call (at most
PEER_WINDOW in flight per peer: a window, so a peer has many messages on the way before the
first ack comes back), and sends each peer's claimed batch packed in `msg_batch` frames (one
seal for many messages; single `msg`s to a peer without the feature) in one ask to the
network's core (they leave together, in one WebSocket message when they fit); each
delivery then waits for the recipient's `msg_ack` (alone or in a `msg_acks` batch); only that
ack marks the delivery done. Acks reach this actor through its own bounded queue and are
recorded in batches, one store call for all that finished together (a stop that comes while
the store records them still takes its answer and publishes their events). A failed attempt is
recorded with its error code and retried with backoff (store.outbox.mark_failed). Passes run
on a new accept, a peer becoming active, a finished attempt, or the next due retry. Deliveries left
inflight by a crash are put back to pending at start. An attempt in flight to a peer that
leaves or comes back (a peer status event) is not waited out to the ack timeout: it is made
due again at once, without counting as a failure, and sent when the peer is active (the
recipient dedupes); so is a claimed batch whose peer left between the read of the active
peers and the send (core refuses it `peer_not_active`, or `no_such_peer` once core forgot
the peer): it never went.

Housekeeping: a sweep makes sends past their TTL dead, and a prune loop deletes history past
the retention in small batches (store.retention), both off the drain path. An evict in a
closed network makes dead at once what waits to go to the evicted device (or everything of
that network, when it is this device): it is never active again. Every delivery that dies so,
or by an `outbox_abort` (the op hands them over: `tell_dead`), is told one batch at a time,
so aborts answered together do not flood the event hub. Such a death is committed `untold`
and marked told once the hub says its `message_dead` is logged: one whose event went unlogged
(a refused write, a full log queue, the hub stopped), or that a stop or a kill left between
the two, is told again by the sweep, at the start and every SWEEP_INTERVAL_S after
(`_tell_untold`), so a daemon that runs for weeks tells it once the log takes it. At least
once: a stop that lands after the log write and before the mark tells it again at the next
start; within a run each is published until logged, then never again (`_tell_dead`).

A full disk: a write of these loops (or of the recovery at start) that the state database
refuses (`storage`) is made again every STORAGE_RETRY_S, with what it carries (acks to record,
received messages to store and ack) kept meanwhile, so the outbox waits for the disk instead
of crashing. A returning peer's backoffs cut and an evict's burial are work the event watcher
hands to a task of its own (`_do_peer_work`), so a refused write never stops it reading the
daemon's events. What events the watcher missed (the outbox was down, or the watch lagged)
would have asked for is read from how things stand instead: every active peer's backoffs cut,
every network's evicted buried.

Receiving: `msg` frames, alone or in a `msg_batch`, are stored in the inbox (deduplicated on
sender and client_message_id), a `message` event is published only for a new one, and every one is
acked, so a sender whose earlier ack was lost still finishes. The acks of one stored batch go
to each sender in one `msg_acks` frame (batched acks). A stop that comes while the store
commits a batch still takes the store's answer (a settled call, within the outbox's shutdown
timeout) and publishes the batch's events: after the restart the senders' redeliveries are
answered `duplicate`, which publishes nothing.

Waiting for the store: every store call the outbox makes (`StoreActor.background_call`) waits
for the store's answer however long it takes, with no STORE_CALL_TIMEOUT. Its only waiter is
one of the outbox's own tasks: a client asks the outbox (`accept`, `tell_dead`) under
STORE_CALL_TIMEOUT of its own and hears `timeout` past it, while the outbox goes on waiting. So
a store slower than that (a long fsync, a big prune, a busy disk) delays the outbox's work,
never crashes and restarts it, and no call the store commits late is given up (an accept's
claim, a received batch's events). Such a wait ends with the store: a store that stops answers
or drops (ActorGone) the calls it took, its next run answers those still queued (its inbox
outlives restarts), and a crash of the store restarts the outbox after it (the daemon's root is
rest_for_one), which ends the wait at once; a store stuck in its thread is the service
manager's to end (the `notifier`'s watchdog probe goes unanswered).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import attrs
import structlog
import trio

from meshactors.actors import (
    Actor,
    ActorGone,
    Doorbell,
    Inbox,
    Lagged,
    Reply,
    Subscriber,
    ask,
    take_queued,
)
from meshactors.clock import wall_ms
from meshactors.event_hub import EVENTS_DROPPED, EventHub
from meshactors.network.manager import NetworkManager
from meshactors.network.message_frames import (
    ACK_TIMEOUT,
    INVALID_MESSAGE,
    MAX_ACKS,
    MAX_MESSAGE_BYTES,
    MAX_META_BYTES,
    Msg,
    MsgAck,
    MsgAcks,
    MsgBatch,
    batches,
    is_permanent,
)
from meshactors.network.peers import STATUS_EVENTS, PeerStatus
from meshactors.store import inbox as inbox_db
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import STORE_CALL_TIMEOUT, StoreActor
from meshactors.store.db import immediate
from meshactors.store.events import Event
from meshactors.store.inbox import InboxMessage
from meshactors.store.outbox import AcceptOutcome, Delivery, SendRequest
from meshactors.store.retention import Retention, prune_step
from meshactors.store.retry import Pause, StorageRetry
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Frame

if TYPE_CHECKING:
    from meshactors.network.network import Network

log = structlog.get_logger("meshactors.outbox")

T = TypeVar("T")
M = TypeVar("M")

ACK_TIMEOUT_S = 30.0  # default seconds a sent msg waits for its msg_ack before it fails
MAX_ACK_TIMEOUT_S = 86_400.0  # the longest `--ack-timeout`
# Deliveries in flight to one peer at once: several claim batches, so the sender claims and
# seals the next batch while the recipient stores the last (a window of one batch made the
# two take turns: drain 2,900/s at 256, 7,350/s at 1,024 on one busy run).
PEER_WINDOW = 1024
CLAIM_BATCH = 256  # due deliveries claimed per network per pass
ACCEPT_INBOX = 256  # runs of sends waiting to be accepted before `send` ops wait
TELL_INBOX = 64  # ops' dead deliveries (aborts) waiting to be told before those ops wait
# seconds an op waits for a place in TELL_INBOX whatever becomes of it (a hang-up cannot cut
# it short); past it the outbox is taken as gone (a stop): the deliveries stay dead, untold
# until the outbox's next sweep tells them (`_tell_untold`), and a warning says so
TELL_PLACE_TIMEOUT = 60.0
# Runs being accepted at once: each waits for the store however long it takes, holding its
# bodies, so while the disk stalls more runs wait in the inbox (their asks time out) instead.
MAX_ACCEPTING = ACCEPT_INBOX
IDLE_POLL_S = 60.0  # longest sleep when nothing is due (wake-ups do the real work)
SWEEP_INTERVAL_S = 60.0  # seconds between sweeps (untold deaths, TTL) and retention passes
PRUNE_PAUSE_S = 0.1  # seconds between prune batches while a retention pass has work
RECEIVE_QUEUE = 4096  # incoming msg frames waiting to be stored; more are dropped (resent)
RECEIVE_BATCH = MAX_ACKS  # incoming messages stored per store call (their acks fit one frame)
ACK_QUEUE = 1024  # incoming ack frames (msg_ack or msg_acks) waiting; more are dropped (resent)
SETTLE_QUEUE = 4096  # finished attempts waiting to be recorded before deliverers wait
SETTLE_BATCH = 512  # finished attempts recorded per store call
WATCH_CAPACITY = 1024  # daemon events queued for the wake-up watcher before it lags
# Peer work (a peer back: its backoffs cut; an evict: what can never go buried) the watcher
# hands to a task of its own, which takes it even while it waits for the disk, keeping one of
# each job not yet started: at most this many handed over and not taken, and as many different
# ones taken and not started. Past them the watcher waits for a place (and may lag:
# WATCH_CAPACITY).
PEER_WORK_QUEUE = 1024
PEER_ACTIVE = STATUS_EVENTS[PeerStatus.ACTIVE]  # its deliveries waiting out a backoff go now
WAKE_EVENTS = frozenset({PEER_ACTIVE, "network_added"})  # events that may make work due
PEER_CHANGE_EVENTS = frozenset(STATUS_EVENTS.values())  # a peer's session began or ended
MEMBER_EVICTED = "member_evicted"  # a device (maybe this one) left a closed network for good
PEER_CHANGED = "peer_changed"  # settles an attempt whose peer left or came back: due again now
# core's refusals of a claimed batch whose peer left after the claim read it active
_PEER_GONE = frozenset({ErrorCode.PEER_NOT_ACTIVE, ErrorCode.NO_SUCH_PEER})
EVENT_MESSAGE_BYTES = 4096  # longer texts are left out of `message` events (read the inbox)


@attrs.frozen
class DurableSettings:
    """The durable-message knobs a daemon runs with (`daemon up` flags set them)."""

    retention: Retention = attrs.field(factory=Retention)
    ack_timeout_s: float = attrs.field(default=ACK_TIMEOUT_S, validator=attrs.validators.gt(0))


@attrs.frozen
class AcceptRun:
    """Sends of one connection to one network, accepted in one store call; `recipients`
    names each send's recipients (a peer once per send: the places it may claim)."""

    network: str
    requests: Sequence[SendRequest]
    recipients: Sequence[str]
    reply: Reply[list[AcceptOutcome | Exception]]


@attrs.frozen
class TellDead:
    """Deliveries an op made dead (`outbox_abort`), to be told like the outbox's own; answered
    once they are, with whether the log holds their events (`_tell_dead`)."""

    deliveries: Sequence[outbox_db.DeliveryKey]
    error: str
    reply: Reply[bool]


@attrs.frozen
class _Shielded(Generic[M]):
    """An inbox sent to with no cancellation in the way, for what must get there once sent:
    only TELL_PLACE_TIMEOUT ends the wait for a place (as a gone actor, for the asker)."""

    inbox: Inbox[M]

    async def send(self, message: M, /) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + TELL_PLACE_TIMEOUT):
            await self.inbox.send(message)
            return
        log.warning(
            "deliveries made dead not told: the outbox took nothing", wait_s=TELL_PLACE_TIMEOUT
        )
        raise trio.BrokenResourceError("no place in the outbox's queue")


@attrs.frozen
class _Settled:
    """One finished attempt: delivered (error None) or failed with an error code."""

    outbox_id: str
    recipient: str
    error: str | None


@attrs.frozen
class _Received:
    """A msg frame from an active peer, waiting to be stored and acked."""

    network: str
    sender: str
    frame: Msg


@attrs.frozen
class _Acks:
    """Ack frames from one peer, waiting to be matched with the deliveries they answer."""

    network: str
    sender: str
    acks: Sequence[MsgAck]


@attrs.frozen
class _DueNow:
    """Peer work: a peer is active again, so what waits out a backoff for it goes now."""

    network: str
    peer: str


@attrs.frozen
class _CutActive:
    """Peer work: a network's peers may have come back unseen (the outbox was down, or its
    watch lagged), so what waits out a backoff for each peer active now goes now."""

    network: str


@attrs.frozen
class _BuryEvicted:
    """Peer work: a network's evict, so what can never go there dies (`_bury_evicted`)."""

    network: str


_PeerWork = _DueNow | _CutActive | _BuryEvicted


@attrs.define(eq=False)
class _PeerWorkQueue:
    """The peer work handed to the outbox's peer work task and not yet started, as it takes
    it: one of each job (a repeat taken while the job waits here is merged into it; one taken
    once it started is done again after it), oldest first, at most PEER_WORK_QUEUE. Only that
    task uses it."""

    receiver: trio.MemoryReceiveChannel[_PeerWork]
    pending: dict[_PeerWork, None] = attrs.field(factory=dict)  # an ordered set

    async def next(self) -> _PeerWork:
        """The oldest job not started, taken off `pending` (waiting for one when none is)."""
        self._take(take_queued(self.receiver, PEER_WORK_QUEUE - len(self.pending)))
        if not self.pending:
            self._take([await self.receiver.receive()])
        job = next(iter(self.pending))
        del self.pending[job]
        return job

    async def gather(self, seconds: float) -> None:
        """Sleep `seconds` (a wait for the disk), taking the jobs handed over meanwhile, so
        the watcher handing them over does not wait for a place while this task waits."""
        with trio.move_on_after(seconds):
            while len(self.pending) < PEER_WORK_QUEUE:
                self._take([await self.receiver.receive()])
            await trio.sleep_forever()  # full: the rest wait in the channel

    def _take(self, jobs: Sequence[_PeerWork]) -> None:
        for job in jobs:
            self.pending[job] = None


@attrs.define(eq=False)
class _Batch:
    """Deliveries sent to one peer in one ask, until each is acked or the batch gives up
    (ack timeout, or its peer left or came back: `peer_changed`)."""

    network: str
    recipient: str
    left: int  # deliveries of the batch still waiting for their ack
    done: trio.Event = attrs.field(factory=trio.Event)
    peer_changed: bool = False


@attrs.frozen
class _Claim:
    """What one pass over a network claimed, when its next delivery falls due, and the
    deliveries in each status once it claimed (the `pending` figure)."""

    deliveries: list[Delivery]
    next_due_ms: int | None
    counts: dict[str, int]


def claim_due(
    conn: sqlite3.Connection, *, network: str, windows: Mapping[str, int], now_ms: int
) -> _Claim:
    """Claim due deliveries to the peers in `windows` (at most that many each, CLAIM_BATCH in
    all), each peer's in queue order, and say when the next one to a peer with room left is
    due; one store round trip per network (the counts for the figures come with it), reading
    only the deliveries it claims."""
    room = dict(windows)
    picked: list[Delivery] = []
    for peer, places in windows.items():
        budget = min(places, CLAIM_BATCH - len(picked))
        if budget <= 0:
            break
        due = outbox_db.due_deliveries(
            conn, now_ms=now_ms, limit=budget, network=network, recipients=[peer]
        )
        room[peer] -= len(due)
        picked.extend(due)
    claimed = set(outbox_db.mark_inflight(conn, [d.key for d in picked], now_ms))
    open_peers = [peer for peer, left in room.items() if left > 0]
    next_due = (
        outbox_db.next_due_at(conn, network=network, recipients=open_peers) if open_peers else None
    )
    picked = [d for d in picked if d.key in claimed]
    return _Claim(picked, next_due, outbox_db.delivery_counts(conn))


def record_settled(conn: sqlite3.Connection, batch: Sequence[_Settled], now_ms: int) -> list[str]:
    """Mark each attempt delivered, failed or (its peer changed) due again, all in one
    transaction; returns each delivery's new status ("gone": no such delivery; "already_done"
    or "already_dead": it had finished before, so this one changed nothing)."""
    statuses: list[str] = []
    with immediate(conn):
        for delivered, run in itertools.groupby(batch, key=lambda item: item.error is None):
            if delivered:  # acks, the common case: recorded together
                keys = [outbox_db.DeliveryKey(item.outbox_id, item.recipient) for item in run]
                statuses.extend(outbox_db.mark_delivered_many(conn, keys, now_ms))
            else:
                statuses.extend(_record_failed(conn, item, now_ms) for item in run)
    return statuses


def _record_failed(conn: sqlite3.Connection, item: _Settled, now_ms: int) -> str:
    assert item.error is not None
    if item.error == PEER_CHANGED:
        outbox_db.mark_due_now(conn, item.outbox_id, item.recipient, now_ms)
        return "pending"
    status = outbox_db.mark_failed(
        conn,
        item.outbox_id,
        item.recipient,
        error_code=item.error,
        permanent=is_permanent(item.error),
        now_ms=now_ms,
    )
    return status or "gone"


def store_received(
    conn: sqlite3.Connection, batch: Sequence[_Received], now_ms: int
) -> list[tuple[InboxMessage, bool]]:
    """Store each received message (deduplicated), all in one transaction; returns the row
    and whether it is new."""
    with immediate(conn):
        return [
            inbox_db.store_message(
                conn,
                network=item.network,
                sender=item.sender,
                client_message_id=item.frame.client_message_id,
                message=item.frame.message,
                meta=item.frame.meta,
                priority=item.frame.priority,
                reply_to_id=item.frame.reply_to_id,
                sent_at=item.frame.sent_at,
                now_ms=now_ms,
            )
            for item in batch
        ]


def msg_frame(delivery: Delivery) -> Msg:
    """The `msg` frame that carries one delivery to its recipient."""
    return Msg(
        ref=delivery.outbox_id,
        client_message_id=delivery.client_message_id,
        message=delivery.message,
        meta=delivery.meta,
        priority=delivery.priority,
        reply_to_id=delivery.reply_to_id,
        sent_at=delivery.created_at,
    )


def dead_event(key: outbox_db.DeliveryKey, error: str) -> dict[str, Any]:
    """The data of `message_dead`: a recipient's copy of a send given up, and why."""
    return {"id": key.outbox_id, "recipient": key.recipient, "error": error}


def message_view(message: InboxMessage, *, full: bool = True) -> dict[str, Any]:
    """An inbox message as ops and `message` events show it (`from` is the sender)."""
    view = {
        "seq": message.seq,
        "network": message.network,
        "from": message.sender,
        "client_message_id": message.client_message_id,
        "message": message.message,
        "meta": message.meta,
        "priority": message.priority,
        "reply_to_id": message.reply_to_id,
        "sent_at": message.sent_at,
        "received_at": message.received_at,
    }
    if not full and len(message.message.encode()) > EVENT_MESSAGE_BYTES:
        view["message"], view["truncated"] = None, True
    return view


def refusal(frame: Msg) -> str | None:
    """Why a received msg cannot be stored (an error code), or None when it can."""
    if len(frame.message.encode()) > MAX_MESSAGE_BYTES:  # UTF-8: never more than a sender's
        # escaped count, so what any sender's op took passes here
        return INVALID_MESSAGE
    meta_bytes = len(json.dumps(frame.meta, separators=(",", ":")).encode())
    return INVALID_MESSAGE if meta_bytes > MAX_META_BYTES else None


@attrs.define(eq=False)
class Outbox(Actor):
    """Delivers queued sends with acks, backoff and per-peer windows; stores received ones."""

    kind: ClassVar[str] = "outbox"

    store: StoreActor
    events: EventHub
    networks: NetworkManager
    settings: DurableSettings = attrs.field(factory=DurableSettings)
    inbox: Inbox[AcceptRun] = attrs.field(factory=lambda: Inbox(ACCEPT_INBOX))
    tell_inbox: Inbox[TellDead] = attrs.field(factory=lambda: Inbox(TELL_INBOX))
    # held while one batch of `message_dead` events goes to the hub, so the sweep, the evict
    # burial and ops' aborts have one batch in the hub at a time between them
    _telling: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _doorbell: Doorbell = attrs.field(factory=Doorbell, init=False)  # rung for a pass soon
    _accepting: trio.Semaphore = attrs.field(
        factory=lambda: trio.Semaphore(MAX_ACCEPTING), init=False
    )
    _inflight: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )
    _waiters: dict[tuple[str, str, str], _Batch] = attrs.field(factory=dict, init=False)
    _received: tuple[trio.MemorySendChannel[_Received], trio.MemoryReceiveChannel[_Received]] = (
        attrs.field(init=False)
    )
    _settled: tuple[trio.MemorySendChannel[_Settled], trio.MemoryReceiveChannel[_Settled]] = (
        attrs.field(init=False)
    )
    # Finished attempts taken to be recorded and not yet answered by the store: a crash (of
    # this actor or the store) mid-record leaves them here, and the next run records them
    # again, so no `message_delivered`/`message_dead` event is lost (recording is idempotent:
    # the store may have run the first call too, so a redo publishes "already_done" as done;
    # otherwise an ack that comes twice publishes and counts its delivery once).
    _recording: list[_Settled] = attrs.field(factory=list, init=False)
    # Received messages taken to be stored and acked, until every ack is sent: the next run
    # stores (deduplicated) and acks them again, so their senders need not wait out the ack
    # timeout, and publishes their `message` events again (they may repeat, same `seq`).
    _storing: list[_Received] = attrs.field(factory=list, init=False)
    _acks: tuple[trio.MemorySendChannel[_Acks], trio.MemoryReceiveChannel[_Acks]] = attrs.field(
        init=False
    )
    counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    stored_counts: dict[str, int] = attrs.field(factory=dict, init=False)
    _storage: StorageRetry = attrs.field(factory=lambda: StorageRetry("the outbox"), init=False)

    def __attrs_post_init__(self) -> None:
        self._received = trio.open_memory_channel[_Received](RECEIVE_QUEUE)
        self._settled = trio.open_memory_channel[_Settled](SETTLE_QUEUE)
        self._acks = trio.open_memory_channel[_Acks](ACK_QUEUE)
        self.networks.on_build.append(self._hook)  # before any network starts: no msg is missed

    async def accept(
        self, network_id: str, requests: Sequence[SendRequest], recipients: Sequence[str]
    ) -> list[AcceptOutcome | Exception]:
        """Accept a run of sends (each answered once its row is committed); the deliveries
        that can go at once are on their way when this returns. A store slower than
        STORE_CALL_TIMEOUT answers AskTimeout here, yet the run is still accepted and sent
        if the store commits it: a retry with the same client_message_id tells."""
        outcomes: list[AcceptOutcome | Exception] = await self.inbox.ask(
            lambda reply: AcceptRun(network_id, requests, recipients, reply),
            timeout=STORE_CALL_TIMEOUT,
            what="outbox: accept sends",
        )
        return outcomes

    async def tell_dead(self, deliveries: Sequence[outbox_db.DeliveryKey], error: str) -> None:
        """Tell deliveries an op made dead (`message_dead` with `error`), paced with the
        outbox's own (`_tell_dead`); returns once the hub has logged them, or said it could not
        (they stay untold until the outbox's next sweep). Their
        death is committed, so they are queued whatever becomes of the op (a hang-up, the
        deadline): shielded and with no deadline, TELL_INBOX being bounded and drained by
        this actor; only the wait for the answer may end in AskTimeout or ActorGone."""
        await ask(
            _Shielded(self.tell_inbox),
            lambda reply: TellDead(deliveries, error, reply),
            timeout=STORE_CALL_TIMEOUT,
            what="outbox: tell deliveries dead",
        )

    def poke(self) -> None:
        """Run a delivery pass soon (a send was accepted, a peer became active, a row was
        requeued, ...): a ring on the outbox's doorbell, which any task may send."""
        self._doorbell.ring()

    def figures(self) -> dict[str, object]:
        return {
            "pending": self.stored_counts.get("pending", 0),
            "inflight": sum(self._inflight.values()),
            "delivered": self.counts["delivered"],
            "failed": self.counts["failed"],
            "dead": self.counts["dead"],
            "received": self.counts["received"],
            "duplicates": self.counts["duplicates"],
            "dropped": self.counts["dropped"],
            "acks_unsent": self.counts["acks_unsent"],
            "stray_acks": self.counts["stray_acks"],
            "redue": self.counts["redue"],
            "backoffs_cut": self.counts["backoffs_cut"],
            "pruned": self.counts["pruned"],
            "storage_refused": self._storage.refused,
            "received_queue": self._received[1].statistics().current_buffer_used,
            "accepting": MAX_ACCEPTING - self._accepting.value,
        }

    async def _write(
        self,
        fn: Callable[..., T],
        what: str,
        *,
        pause: Pause = trio.sleep,
        settle: bool = False,
        **params: Any,
    ) -> T:
        """`fn(conn, **params, now_ms=…)` as a background store call, made again (the clock
        read again) while the disk refuses it (`StorageRetry`). With `settle`, for a call whose
        events only its answer tells: a stop for good that comes while the store runs it still
        returns what it committed (`ask`)."""

        async def attempt() -> T:
            call = functools.partial(fn, **params, now_ms=wall_ms())
            return await self.store.background_call(call, what=what, settle=settle)

        return await self._storage.until_written(attempt, what, pause)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._inflight.clear()
        self._waiters.clear()
        watch, _ = await self.events.subscribe(WATCH_CAPACITY)
        with watch:
            task_status.started()
            # Started before the recovery, which a full disk makes wait (asks queue meanwhile):
            # a start waiting for the disk holds up neither the daemon's start nor the
            # supervisor, and a refusal is no crash counted toward its restart limit. Nothing
            # claims or accepts before it, so it resets only the last run's attempts.
            recovered = await self._write(outbox_db.recover_inflight, "recover inflight")
            if recovered:
                log.info("recovered inflight deliveries", count=recovered)
            work, taken = trio.open_memory_channel[_PeerWork](PEER_WORK_QUEUE)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, watch, work)
                nursery.start_soon(self._do_peer_work, _PeerWorkQueue(taken))
                nursery.start_soon(self._store_received)
                nursery.start_soon(self._record_settled)
                nursery.start_soon(self._take_acks)
                nursery.start_soon(self._sweep)
                nursery.start_soon(self._prune)
                nursery.start_soon(self._tell_ops_dead)
                nursery.start_soon(self._accept_runs, nursery)
                await self._drain(nursery)

    # -- accepting ----------------------------------------------------------------------------

    async def _accept_runs(self, nursery: trio.Nursery) -> None:
        """Take the runs that queued together, reserve window places for the active peers
        they name, and accept each in a store call of its own (the store commits calls that
        queue together in one transaction); at most MAX_ACCEPTING at once, the rest wait.
        A network's active peers are read once for the runs that queued together, and again
        after a wait for a place: peers come and go meanwhile."""
        receiver = self.inbox.receiver
        async for first in receiver:
            runs = collections.deque([first, *take_queued(receiver, ACCEPT_INBOX - 1)])
            active: dict[str, tuple[Network | None, frozenset[str]]] = {}
            try:
                while runs:
                    await self._start_accept(runs[0], active, nursery)
                    runs.popleft()  # its accept's task answers it
            finally:
                for run in runs:  # taken, never to be accepted (this outbox stops): the
                    run.reply.drop()  # asker hears ActorGone now, not at its deadline

    async def _start_accept(
        self,
        run: AcceptRun,
        active: dict[str, tuple[Network | None, frozenset[str]]],
        nursery: trio.Nursery,
    ) -> None:
        """Wait for an accept place, reserve the run's window places by the active peers of
        its network (read into `active` unless there already) and start its accept's task."""
        if not self._accepting.value:
            active.clear()  # read again once a place is free
        await self._accepting.acquire()  # the accept's task gives the place back
        try:
            if run.network not in active:
                active[run.network] = await self._active_peers(run.network)
        except BaseException:
            self._accepting.release()  # cut off before an accept's task holds it
            raise
        network, peers = active[run.network]
        room = self._reserve(run.network, run.recipients, peers)
        nursery.start_soon(self._accept, run, network, room, nursery)

    async def _active_peers(self, network_id: str) -> tuple[Network | None, frozenset[str]]:
        """The network and its active peers; none while it is gone or its core restarts."""
        try:
            network = self.networks.get(network_id)
            return network, frozenset(await network.active_peers())
        except OpError:
            return None, frozenset()

    def _reserve(
        self, network_id: str, recipients: Sequence[str], active: frozenset[str]
    ) -> dict[str, int]:
        """Window places for the run's active recipients, held until its accept returns."""
        room: dict[str, int] = {}
        for peer, wanted in collections.Counter(r for r in recipients if r in active).items():
            places = min(wanted, PEER_WINDOW - self._inflight[network_id, peer])
            if places > 0:
                room[peer] = places
                self._inflight[network_id, peer] += places
        return room

    async def _accept(
        self,
        run: AcceptRun,
        network: Network | None,
        room: dict[str, int],
        nursery: trio.Nursery,
    ) -> None:
        """Accept one run, send what it claimed, give back the places it did not use; a run
        cut off before its answer (this outbox stops) is dropped: ActorGone at once."""
        reserved = dict(room)
        claimed: list[Delivery] = []
        try:
            # An accept the store has taken still commits after a deadline, and may claim
            # deliveries (inflight) that only this task sends, so only the store's answer
            # says what to send. The op asking is still answered in time (`accept`).
            outcomes = await self.store.background_call(
                functools.partial(outbox_db.accept_many, requests=run.requests, room=room),
                what="accept sends",
            )
            claimed = [
                delivery
                for outcome in outcomes
                if isinstance(outcome, AcceptOutcome)
                for delivery in outcome.claimed
            ]
        except Exception as exc:
            run.reply.fail(exc)
        else:
            if claimed:
                assert network is not None  # only an active peer of a running network has room
                self._send_claimed(network, claimed, nursery)
            run.reply.ok(outcomes)
            if any(isinstance(o, AcceptOutcome) and o.status == "pending" for o in outcomes):
                self.poke()
        finally:
            run.reply.drop()  # harmless after an answer
            self._accepting.release()
            sent = collections.Counter(delivery.recipient for delivery in claimed)
            for peer, places in reserved.items():
                self._inflight[run.network, peer] -= places - sent[peer]

    # -- sending ------------------------------------------------------------------------------

    async def _drain(self, nursery: trio.Nursery) -> None:
        while True:
            self._doorbell.clear()
            next_due = await self._storage.until_written(
                functools.partial(self._pass_all, nursery), "claim due deliveries"
            )
            wait = IDLE_POLL_S if next_due is None else max(0.0, (next_due - wall_ms()) / 1000)
            with trio.move_on_after(min(wait, IDLE_POLL_S)):
                await self._doorbell.wait()

    async def _pass_all(self, nursery: trio.Nursery) -> int | None:
        """A pass over every network; when the next delivery not claimed falls due."""
        next_due, counted = None, False
        for network in self.networks.all():
            claim = await self._pass(network, nursery)
            if claim is None:
                continue
            self.stored_counts, counted = claim.counts, True
            if (due := claim.next_due_ms) is not None:
                next_due = due if next_due is None else min(next_due, due)
        if not counted:  # no pass claimed: count in a store call of its own
            self.stored_counts = await self.store.background_call(
                outbox_db.delivery_counts, what="count deliveries"
            )
        return next_due

    async def _pass(self, network: Network, nursery: trio.Nursery) -> _Claim | None:
        """Claim what is due to the network's active peers with room in their window and
        start sending it; None when there was no room or no core to ask."""
        network_id = network.config.id
        try:
            active = await network.active_peers()
        except OpError:  # its core is restarting: its peers are due again once it runs
            return None
        windows = {peer: PEER_WINDOW - self._inflight[network_id, peer] for peer in active}
        windows = {peer: room for peer, room in windows.items() if room > 0}
        if not windows:
            return None
        claim = await self.store.background_call(
            functools.partial(claim_due, network=network_id, windows=windows, now_ms=wall_ms()),
            what="claim due deliveries",
        )
        for delivery in claim.deliveries:
            self._inflight[network_id, delivery.recipient] += 1
        self._send_claimed(network, claim.deliveries, nursery)
        return claim

    def _send_claimed(
        self, network: Network, claimed: Sequence[Delivery], nursery: trio.Nursery
    ) -> None:
        """Start sending claimed deliveries (their places already counted in flight): each
        peer's, in queue order, in one batch of its own."""
        by_peer: dict[str, list[Delivery]] = collections.defaultdict(list)
        for delivery in claimed:
            by_peer[delivery.recipient].append(delivery)
        for peer, deliveries in by_peer.items():
            nursery.start_soon(self._deliver, network, peer, deliveries)

    async def _deliver(self, network: Network, peer: str, deliveries: list[Delivery]) -> None:
        """Send one peer's claimed batch in one ask to core and wait for the acks; whatever is
        not acked within the ack timeout (or when the peer changes) is settled here."""
        network_id = network.config.id
        batch = _Batch(network_id, peer, len(deliveries))
        keys = [(network_id, peer, delivery.outbox_id) for delivery in deliveries]
        for key in keys:
            self._waiters[key] = batch
        error: str | None = None
        try:
            with trio.move_on_after(self.settings.ack_timeout_s):
                try:
                    await network.send_frames_to_peer(
                        peer, batches([msg_frame(d) for d in deliveries])
                    )
                except OpError as exc:
                    # the peer left (or core forgot it) after the claim read it active, so
                    # nothing went and no attempt is used up (the next claim waits for it)
                    gone = exc.code in _PEER_GONE
                    error = PEER_CHANGED if gone else exc.code.value
                else:
                    await batch.done.wait()
        finally:
            unacked = [key[2] for key in keys if self._waiters.get(key) is batch]
            for outbox_id in unacked:
                del self._waiters[network_id, peer, outbox_id]
            self._inflight[network_id, peer] -= len(unacked)
        if error is None:
            error = PEER_CHANGED if batch.peer_changed else ACK_TIMEOUT
        for outbox_id in unacked:
            await self._settled[0].send(_Settled(outbox_id, peer, error))
        if unacked:
            self.poke()

    def _on_ack(self, network_id: str, sender: str, frame: Frame) -> None:
        assert isinstance(frame, MsgAck)
        self._queue_acks(_Acks(network_id, sender, [frame]))

    def _on_acks(self, network_id: str, sender: str, frame: Frame) -> None:
        assert isinstance(frame, MsgAcks)
        self._queue_acks(_Acks(network_id, sender, frame.acks))

    def _queue_acks(self, acks: _Acks) -> None:
        """Hand acks from core's task to this actor's ack queue (never waits)."""
        try:
            self._acks[0].send_nowait(acks)
        except trio.WouldBlock:
            self.counts["dropped"] += len(acks.acks)  # those attempts time out and are resent

    async def _take_acks(self) -> None:
        """Match acks with the deliveries waiting for them (freeing their window places at
        once) and pass them on to be recorded, all that arrived together in one go."""
        receiver = self._acks[1]
        async for first in receiver:
            settled: list[_Settled] = []
            for item in [first, *take_queued(receiver, ACK_QUEUE - 1)]:
                settled.extend(self._match_acks(item))
            for done in settled:
                await self._settled[0].send(done)
            self.poke()

    def _match_acks(self, item: _Acks) -> list[_Settled]:
        """The attempts `item` finishes: those waiting, and (not rejected) those whose
        attempt timed out before the ack came (the peer has them now)."""
        settled = []
        for ack in item.acks:
            error = None
            if ack.status == "rejected":
                error = ack.error if ack.error is not None else INVALID_MESSAGE
            batch = self._waiters.pop((item.network, item.sender, ack.ref), None)
            if batch is not None:
                self._inflight[item.network, item.sender] -= 1
                batch.left -= 1
                if batch.left == 0:
                    batch.done.set()
            elif error is not None:
                continue  # a late refusal: the timed-out attempt was recorded as failed
            settled.append(_Settled(ack.ref, item.sender, error))
        return settled

    async def _record_settled(self) -> None:
        receiver = self._settled[1]
        while True:
            redo = bool(self._recording)
            if not redo:
                first = await receiver.receive()
                self._recording = [first, *take_queued(receiver, SETTLE_BATCH - 1)]
            batch = self._recording
            try:
                # kept while the disk refuses it: acks that come meanwhile queue behind it;
                # settled, so a stop cannot leave what the store committed untold (a delivery
                # done is never sent again, so nothing would tell it after the restart)
                statuses = await self._write(
                    record_settled, "record deliveries", settle=True, batch=batch
                )
            except Exception:
                self._recording = []  # the store answered (a failure): not again after a restart
                raise
            self._recording = []
            told: set[tuple[str, str]] = set()  # deliveries this batch published as delivered
            published = 0
            for item, status in zip(batch, statuses, strict=True):
                if item.error == PEER_CHANGED:
                    self.counts["redue"] += 1
                    self.poke()  # due now in the store: a pass that ran before this misses it
                    continue
                if item.error is None:
                    key = (item.outbox_id, item.recipient)
                    if status == "already_done" and redo and key not in told:
                        status = "done"  # maybe the call a crash cut off finished it: not told
                    self.counts["stray_acks"] += status == "gone"  # no such delivery to it
                    if status != "done":
                        continue  # a repeated ack (its delivery was told already) or a pruned row
                    told.add(key)
                elif status == "already_done" or (status == "already_dead" and not redo):
                    continue  # the attempt failed after its delivery had finished: no news
                elif status == "already_dead":
                    status = "dead"  # maybe the call a crash cut off killed it: not told
                self.counts["delivered" if item.error is None else "failed"] += 1
                self.counts["dead"] += status == "dead"
                if status in ("done", "dead"):
                    self.events.publish(
                        "message_delivered" if status == "done" else "message_dead",
                        {"id": item.outbox_id, "recipient": item.recipient, "error": item.error},
                    )
                    published += 1
            await self._pace_events(published)

    async def _sweep(self) -> None:
        """Every SWEEP_INTERVAL_S, from the start: tell the deaths left untold (by the last run,
        or a telling of this one the log refused), then make sends past their TTL dead even if
        their peer never came back."""
        while True:
            await self._tell_untold()
            await self._bury(outbox_db.expire_pending, outbox_db.EXPIRED, "expire sends")
            await trio.sleep(SWEEP_INTERVAL_S)

    async def _bury(
        self,
        kill: Callable[..., outbox_db.Expired],
        error: str,
        what: str,
        pause: Pause = trio.sleep,
    ) -> None:
        """Call `kill` (a store function making deliveries dead in bounded batches) until it
        has no more; each delivery that ends so is told like any other that gives up
        (`message_dead` with `error`), one batch at a time (`_pace_events`)."""
        more = True
        while more:
            buried = await self._write(kill, what, pause=pause)
            more = buried.more
            await self._tell_dead(buried.deliveries, error, pause)

    async def _tell_ops_dead(self) -> None:
        """Tell, one op at a time, the deliveries ops made dead (`tell_dead`)."""
        async for told in self.tell_inbox.receiver:
            await told.reply.answer_with(
                functools.partial(self._tell_dead, told.deliveries, told.error)
            )

    async def _tell_untold(self) -> None:
        """Tell the deaths committed and left untold (a stop or a kill came between, or the log
        did not take their events), EXPIRE_DELIVERIES at a time, until none is left or a
        batch's events were not all logged (`_tell_dead`): those stay untold for the next
        sweep, not published again and again by this one."""
        while untold := await self.store.background_call(
            functools.partial(outbox_db.untold_deaths, limit=outbox_db.EXPIRE_DELIVERIES),
            what="read untold deaths",
        ):
            by_error: dict[str, list[outbox_db.DeliveryKey]] = collections.defaultdict(list)
            for key, error in untold:
                by_error[error].append(key)
            for error, keys in by_error.items():
                if not await self._tell_dead(keys, error):
                    return

    async def _tell_dead(
        self,
        deliveries: Sequence[outbox_db.DeliveryKey],
        error: str,
        pause: Pause = trio.sleep,
    ) -> bool:
        """Tell each delivery that died (`message_dead` with `error`) and is not told yet, a
        batch (at most EXPIRE_DELIVERIES or MAX_RECIPIENTS) at a time, one caller at a time,
        waiting until the hub has logged them (paced as `_pace_events` paces), so neither a
        backlog nor many aborts answered together put more than a batch in the hub; marked
        told only once the hub says the log holds them all, so events that went unlogged
        (a refused write, a full log queue, the hub stopped) leave them to `_tell_untold` at
        the next sweep; counted dead then. The told ones are read under the lock that
        serialises the tellings, so a death told meanwhile is not published again. True when
        none is left untold."""
        if not deliveries:
            return True
        async with self._telling:
            untold = await self.store.background_call(
                functools.partial(outbox_db.still_untold, keys=deliveries),
                what="read untold deaths",
            )
            if not untold:
                return True
            try:
                logged = await self.events.publish_logged(
                    "message_dead", [dead_event(key, error) for key in untold]
                )
            except ActorGone:
                return False  # the hub stopped before it logged them
            if logged:
                await self._write(outbox_db.mark_told, "mark deaths told", pause=pause, keys=untold)
                self.counts["dead"] += len(untold)  # once each, however often its telling failed
            return logged

    async def _pace_events(self, published: int) -> None:
        """After a batch published `published` events, wait until the hub has numbered and
        logged them before the next batch, so a burst of batches (a backlog made dead,
        thousands of messages or acks at once) never has more than one batch of each loop in
        the hub's inbox or log queue, where a full one drops or leaves unlogged what comes."""
        if not published:
            return
        with contextlib.suppress(ActorGone):  # the hub stopped or restarted: none left to wait
            # No deadline: it only paces, and waits no longer than the log's writes.
            await self.events.flush(timeout=math.inf)

    async def _bury_evicted(self, network_id: str, pause: Pause) -> None:
        """Make dead the deliveries of a network that can never go: to a device evicted from
        it, or all of them once this device is evicted (Membership.undeliverable)."""
        try:
            network = self.networks.get(network_id)
            evicted = await network.undeliverable()
        except OpError:  # gone, or its core restarts: its next evict event checks again
            return
        if evicted is None or evicted:
            kill = functools.partial(outbox_db.bury_evicted, network=network_id, recipients=evicted)
            await self._bury(kill, outbox_db.EVICTED, "bury sends to the evicted", pause)

    async def _prune(self) -> None:
        """Every SWEEP_INTERVAL_S, delete history past the retention, one small batch at a
        time with a pause between, so the drain path never waits long for the store."""
        retention = self.settings.retention
        while True:
            while deleted := await self._write(prune_step, "prune history", retention=retention):
                self.counts["pruned"] += deleted
                await trio.sleep(PRUNE_PAUSE_S)
            await trio.sleep(SWEEP_INTERVAL_S)

    # -- receiving ----------------------------------------------------------------------------

    def _on_msg(self, network_id: str, sender: str, frame: Frame) -> None:
        assert isinstance(frame, Msg)
        self._queue_received(network_id, sender, [frame])

    def _on_msg_batch(self, network_id: str, sender: str, frame: Frame) -> None:
        assert isinstance(frame, MsgBatch)
        self._queue_received(network_id, sender, frame.msgs)

    def _queue_received(self, network_id: str, sender: str, msgs: Sequence[Msg]) -> None:
        """Hand msgs from core's task to this actor's receive queue (never waits)."""
        for index, msg in enumerate(msgs):
            try:
                self._received[0].send_nowait(_Received(network_id, sender, msg))
            except trio.WouldBlock:
                self.counts["dropped"] += len(msgs) - index  # not acked: sent again later
                return

    async def _store_received(self) -> None:
        receiver = self._received[1]
        while True:
            redo = bool(self._storing)
            if not redo:
                first = await receiver.receive()
                self._storing = [first, *take_queued(receiver, RECEIVE_BATCH - 1)]
            batch = self._storing
            refused = [(item, refusal(item.frame)) for item in batch]
            storable = [item for item, reason in refused if reason is None]
            try:  # kept while the disk refuses it: the senders are acked once it is stored
                # Settled: a stop cannot leave what the store committed without its events
                # (a redelivery after the restart is answered `duplicate`, which tells nothing).
                stored = await self._write(
                    store_received, "store received messages", settle=True, batch=storable
                )
            except Exception:
                log.exception("could not store received messages", count=len(storable))
                self._storing = []
                continue  # not acked: the senders try again
            published = 0
            for message, new in stored:
                self.counts["received" if new else "duplicates"] += 1
                if new or redo:
                    self.events.publish("message", message_view(message, full=False))
                    published += 1
            results = iter(stored)
            acks: dict[tuple[str, str], list[MsgAck]] = collections.defaultdict(list)
            for item, reason in refused:
                if reason is not None:
                    ack = MsgAck(item.frame.ref, "rejected", reason)
                else:
                    ack = MsgAck(item.frame.ref, "stored" if next(results)[1] else "duplicate")
                acks[item.network, item.sender].append(ack)
            for (network_id, sender), answers in acks.items():
                await self._answer(network_id, sender, answers)
            self._storing = []
            await self._pace_events(published)  # after the acks: their senders need not wait

    async def _answer(self, network_id: str, sender: str, acks: list[MsgAck]) -> None:
        """Ack one sender's messages of a stored batch in one `msg_acks` frame (split or sent
        as single `msg_ack`s by the network when too large or when the peer lacks it)."""
        try:
            await self.networks.get(network_id).send_to_peer(sender, MsgAcks(acks))
        except OpError:
            self.counts["acks_unsent"] += len(acks)  # the sender's attempts time out, resent

    # -- wiring -------------------------------------------------------------------------------

    def _hook(self, network: Network) -> None:
        """Register the msg, msg_batch and ack handlers on a network as it is built, before it
        starts; what arrives while this actor is down waits in its bounded queues."""
        network_id = network.config.id
        network.register_app_handler(Msg.tag, functools.partial(self._on_msg, network_id))
        network.register_app_handler(
            MsgBatch.tag, functools.partial(self._on_msg_batch, network_id)
        )
        network.register_app_handler(MsgAck.tag, functools.partial(self._on_ack, network_id))
        network.register_app_handler(MsgAcks.tag, functools.partial(self._on_acks, network_id))

    async def _watch(
        self, watch: Subscriber[Event], work: trio.MemorySendChannel[_PeerWork]
    ) -> None:
        """Act on the daemon's events: at once on what needs no store call, handing the rest
        (peer work) to `_do_peer_work`, so a full disk, which makes those store calls wait,
        never stops this reading (a watch that lags misses peers that left, whose attempts
        then wait out the ack timeout). What the events this actor missed (it was down, the
        watch lagged, or the hub dropped events unnumbered: EVENTS_DROPPED) would have handed
        over is handed over for every network (`_catch_up`)."""
        await self._catch_up(work)
        async for event in watch:
            if isinstance(event, Lagged) or event.kind == EVENTS_DROPPED:
                await self._catch_up(work)
                self.poke()
                continue
            if event.kind in PEER_CHANGE_EVENTS:
                self._peer_changed(event.data["network"], event.data["device_id"])
            if event.kind == PEER_ACTIVE:
                await work.send(_DueNow(event.data["network"], event.data["device_id"]))
            if event.kind == MEMBER_EVICTED:
                await work.send(_BuryEvicted(event.data["network"]))
            if event.kind in WAKE_EVENTS:
                self.poke()

    async def _catch_up(self, work: trio.MemorySendChannel[_PeerWork]) -> None:
        """Hand over, for every network, the peer work missed events may have asked for, read
        from how things stand now rather than from the events: the backoffs of its active
        peers cut (`_cut_active`), what goes to the evicted buried (`_bury_evicted`)."""
        for network in self.networks.all():
            await work.send(_CutActive(network.config.id))
            await work.send(_BuryEvicted(network.config.id))

    async def _do_peer_work(self, work: _PeerWorkQueue) -> None:
        """Do the peer work the watcher hands over, one job at a time, taking what it hands
        over meanwhile even while a refused write waits for the disk (`gather`)."""
        while True:
            match await work.next():
                case _DueNow(network=network_id, peer=peer):
                    await self._due_now(network_id, [peer], work.gather)
                case _CutActive(network=network_id):
                    await self._cut_active(network_id, work.gather)
                case _BuryEvicted(network=network_id):
                    await self._bury_evicted(network_id, work.gather)

    async def _due_now(self, network_id: str, peers: Collection[str], pause: Pause) -> None:
        """Peers are reachable again: what waits out a backoff for them goes now, not minutes
        later (the backoff is there for a peer that cannot be reached); one store call."""
        cut = await self._write(
            outbox_db.due_now_to_peers,
            "make deliveries due",
            pause=pause,
            network=network_id,
            recipients=peers,
        )
        self.counts["backoffs_cut"] += cut
        if cut:
            self.poke()  # a pass that ran at the peer's return found them not due yet

    async def _cut_active(self, network_id: str, pause: Pause) -> None:
        """`_due_now` for the peers of a network active now, all in one store call: one whose
        `peer_active` this actor missed would otherwise wait out its backoff."""
        try:
            active = await self.networks.get(network_id).active_peers()
        except OpError:  # gone, or its core restarts: each peer is told active again after it
            return
        if active:
            await self._due_now(network_id, active, pause)

    def _peer_changed(self, network_id: str, peer: str) -> None:
        """Release the attempts in flight to a peer that left or came back: their acks will
        not come, so they are due again now instead of at the ack timeout."""
        for batch in set(self._waiters.values()):
            if (batch.network, batch.recipient) == (network_id, peer):
                batch.peer_changed = True
                batch.done.set()
