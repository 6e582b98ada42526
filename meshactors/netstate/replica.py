"""The `state` part of a network's core: the one owner of its replicated key-value map.

Ops reach it only by asking core (`Network.ask`); frame handlers and the peer status listener
run in core's task and only check and queue. One task of core (the part's `run`) works the
queue in order: it stamps local writes, merges, saves to the store, publishes `state_changed`,
answers local writes and sends frames, so every change of the map, of its clock, of its rows
and of what the part keeps by peer happens in one place.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from meshactors.actors import Pending, take_queued
from meshactors.broker.limits import TokenBucket
from meshactors.clock import wall_ms
from meshactors.event_hub import EventPublisher
from meshactors.netstate.entry import BadEntry, Entry, check_key
from meshactors.netstate.frames import (
    MAX_PAGE_BYTES,
    MAX_PAGE_ENTRIES,
    MAX_PULL_ID,
    StatePage,
    StatePull,
    StatePut,
    StateSummary,
    WireEntry,
    pages,
)
from meshactors.netstate.hlc import ZERO, HybridClock, Stamp
from meshactors.netstate.statemap import (
    MAX_KEYS,
    MAX_STATE_BYTES,
    MERGE_SLACK,
    TOMBSTONE_TTL_MS,
    StateMap,
)
from meshactors.netstate.store import load_state, save_state
from meshactors.netstate.writers import WriterCheck
from meshactors.network.app_wire import AppWire
from meshactors.network.calls import DeadlineHeap
from meshactors.network.peers import MAX_PEERS, TOKEN_ROUNDING, PeerStatus
from meshactors.store.actor import StoreActor
from meshactors.turns import take_turns
from meshactors.wire.ipc import MAX_PAGE, MAX_PAGE_DATA_BYTES, ErrorCode, OpError
from meshactors.wire.peer import Frame

log = structlog.get_logger("meshactors.netstate")

STATE_INBOX = 1024  # frames and local writes queued for the state task; more are refused
BEHIND_QUEUE = MAX_PEERS  # peers whose frames a full queue dropped, told the state task once
# each until it takes them: every peer the table tracks fits
WORK_BATCH = 256  # queued items worked (and saved in one store call) together
SYNC_INTERVAL = 60.0  # seconds between summaries to each active peer (repairs a lost write)...
SYNC_RATE = 1.0  # ...while that stays under this many summaries a second per network
MAX_AHEAD_MS = 24 * 3600 * 1000  # a peer's write stamped further ahead of our clock is dropped
PRUNE_INTERVAL = 3600.0  # seconds between sweeps for expired tombstones (the first at start)
# The pages we answer one peer's pulls with, in bytes: their entries as encoded, plus PAGE_COST
# each. A page is small to ask for and up to a frame to answer, so a peer repeating pulls would
# have us send far more than it does; the pace holds it to a rate, while a full catch-up of the
# largest map (twice MAX_STATE_BYTES, merged from peers) takes some 20 s at most.
PULL_PACE_BYTES = 2 * 1024 * 1024  # a second, sustained...
PULL_PACE_BURST = 8 * 1024 * 1024  # ...and at once
PAGE_COST = 16 * 1024  # counted for every page beyond its entries: the walk of the map it took
CHANGED = "state_changed"  # the event kind
# refusals that may not hold later: the author may become a member, our clock catch up
TRANSIENT_REFUSALS = ("not_writer", "future_stamp")


@attrs.frozen
class _FromPeer:
    """A state frame from a peer (decoded strictly; its writes are checked when merged)."""

    sender: str
    frame: Frame


@attrs.frozen
class _OwnWrite:
    """A write of ours to stamp, put in the map, save, announce and send: `unstamped` is its
    entry as checked in core's task, stamped ZERO until the state task gives it its stamp."""

    unstamped: Entry
    done: Pending[dict[str, Any]]


@attrs.frozen
class _SendSummary:
    """A peer became active (or is due a periodic summary): send it ours."""

    peer: str
    ask: bool = False


@attrs.frozen
class _Prune:
    """Time to forget the expired tombstones (statemap.TOMBSTONE_TTL_MS)."""


@attrs.frozen
class _PeerLeft:
    """A peer is no longer active: end its catch-up and forget the pull of its held back."""

    peer: str


_Work = _FromPeer | _OwnWrite | _SendSummary | _Prune | _PeerLeft


@attrs.frozen
class _Held:
    """A peer's pull past its pace, and when the pace allows it (trio time)."""

    pull: StatePull
    due: float


@attrs.define
class _Catchup:
    """A catch-up from one peer in progress: its id, the buckets it walks, the two summaries
    it started from (the peer's, ours), our map's count of changes then and our count of
    transient refusals then."""

    id: int
    buckets: list[int]
    summaries: tuple[str, str]
    changes: int
    refused: int


@attrs.define(eq=False)
class StateReplica:
    """One network's replicated map, a part of its core: reads and local writes come as
    asks, peers' writes and catch-up pages as frames.

    Each field has one writer. The state task (`run`: `_work`, with `_sync_loop` and
    `_prune_loop`, which only queue work) owns `map`, `clock`, `counters`, `dropped` and what
    it keeps by peer. Core's task (the asks, the frame handlers, the peer status listener)
    owns `dropped_in_core` and `_behind_told`, and reaches the state task only through
    `_send` and `_behind_send`. Core's task reads `map` (`get`, `list_live`) between the
    state task's steps: it sees a write of ours from its merge until a failed save takes it
    back. The state task reads core's peer table through `wire` and `may_write`, as every
    part's loop does; `figures` reads both sides.
    """

    network: str
    wire: AppWire
    store: StoreActor
    events: EventPublisher
    may_write: WriterCheck  # who may write: see netstate/writers.py
    map: StateMap = attrs.field(factory=StateMap, init=False)
    clock: HybridClock = attrs.field(factory=HybridClock, init=False)
    counters: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    # what core's task dropped (a full queue); `figures` shows it summed with `dropped`
    dropped_in_core: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _pulls: dict[str, _Catchup] = attrs.field(factory=dict, init=False)
    # by peer: the summaries (theirs, ours) of its last catch-up that changed nothing here
    _fruitless: dict[str, tuple[str, str]] = attrs.field(factory=dict, init=False)
    _pull_ids: int = attrs.field(default=0, init=False)
    # core's: the peers told on `_behind_send` since the state task last took every one
    _behind_told: set[str] = attrs.field(factory=set, init=False)
    # by peer: the pace of the pages we answer it, and the pull past it waiting for the pace
    _paces: dict[str, TokenBucket] = attrs.field(factory=dict, init=False)
    _held: dict[str, _Held] = attrs.field(factory=dict, init=False)
    _release_at: DeadlineHeap = attrs.field(factory=DeadlineHeap, init=False)  # the same, by time
    _send: trio.MemorySendChannel[_Work] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[_Work] = attrs.field(init=False)
    _behind_send: trio.MemorySendChannel[str] = attrs.field(init=False)
    _behind_receive: trio.MemoryReceiveChannel[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[_Work](STATE_INBOX)
        self._behind_send, self._behind_receive = trio.open_memory_channel[str](BEHIND_QUEUE)
        for frame in (StatePut, StatePage, StateSummary, StatePull):
            self.wire.register(frame.tag, self._queue)

    def figures(self) -> dict[str, object]:
        return {
            "keys": len(self.map) - self.map.tombstones,
            "tombstones": self.map.tombstones,
            "bytes": self.map.bytes,
            "pulls": len(self._pulls),
            "pulls_held": len(self._held),
            "queued": self._receive.statistics().current_buffer_used,
            "counters": dict(self.counters),
            "dropped": dict(self.dropped + self.dropped_in_core),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        entries = await self.store.background_call(  # the start's own: it waits for the store
            functools.partial(load_state, network=self.network), what="load the state map"
        )
        self.map, self.clock, self._pulls, self._fruitless = StateMap(), HybridClock(), {}, {}
        self._held, self._release_at = {}, DeadlineHeap()
        for entry in entries:
            self.map.merge(entry)
            self.clock.observe(entry.stamp)
        self._warn_if_ahead(entries)
        self._queue_prune()  # ahead of any write made after start
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._prune_loop)
            task_status.started()
            await self._work()

    # -- asks (run in core's task) ------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any]:
        """state_get: a live key's value and version (not_found: absent or deleted)."""
        _checked(check_key, key)
        entry = self.map.get(key)
        if entry is None or entry.deleted:
            raise OpError(ErrorCode.NOT_FOUND, f"no key {key!r} in {self.network}")
        return self._view(entry)

    def list_live(self, prefix: str, limit: int, cursor: str | None) -> dict[str, Any]:
        """state_list: live keys starting with `prefix`, in key order, after `cursor`."""
        if not 1 <= limit <= MAX_PAGE:
            raise OpError(ErrorCode.INVALID_PARAMS, f"limit must be 1-{MAX_PAGE}, got {limit}")
        if cursor is not None:
            _checked(check_key, cursor)
        found, more = self.map.live(prefix, cursor, limit, MAX_PAGE_DATA_BYTES)
        return {
            "network": self.network,
            "entries": [self._view(entry) for entry in found],
            "next_cursor": found[-1].key if more else None,
        }

    def write(self, key: str, value: Any, *, deleted: bool) -> Pending[dict[str, Any]]:
        """state_set / state_delete: check the write and queue it for the state task, which
        stamps it, puts it in the map (or refuses it: `conflict`, `state_full`), saves it,
        then announces and sends it (or takes it back if the save fails); the op waits on
        the returned outcome."""
        own = self.wire.own_id
        if not self.may_write(own, own):
            raise OpError(ErrorCode.FORBIDDEN, f"this device may not write {self.network}'s state")
        try:
            unstamped = (
                Entry.tombstone(key, ZERO, own) if deleted else Entry.write(key, value, ZERO, own)
            )
        except BadEntry as bad:
            raise _client_error(bad) from None
        done: Pending[dict[str, Any]] = Pending()
        try:
            self._send.send_nowait(_OwnWrite(unstamped, done))
        except trio.WouldBlock:
            raise OpError(ErrorCode.UNAVAILABLE, "the state map is busy; retry") from None
        return done

    def _warn_if_ahead(self, loaded: list[Entry]) -> None:
        """Warn and count (`loaded_ahead`) the loaded entries stamped more than MAX_AHEAD_MS
        past this machine's clock: the clock starts from them, so our writes are refused
        until it catches up (`_stamped`), which an operator should hear of at start."""
        now = wall_ms()
        ahead = [entry for entry in loaded if entry.stamp.wall - now > MAX_AHEAD_MS]
        if ahead:
            self.counters["loaded_ahead"] += len(ahead)
            log.warning(
                "state clock ahead: our writes are refused",
                network=self.network,
                entries=len(ahead),
                reason=self._clock_ahead(self.clock.last, now).message,
            )

    def _clock_ahead(self, stamp: Stamp, now: int) -> OpError:
        """The refusal of a write our clock would stamp `stamp`, more than MAX_AHEAD_MS past
        this machine's clock (`now`): every peer would drop it (`future_stamp`)."""
        ahead, limit = _hours(stamp.wall - now), _hours(MAX_AHEAD_MS)
        return OpError(
            ErrorCode.CONFLICT,
            f"{self.network}'s state clock is {ahead} h ahead of this machine's clock (the "
            f"map holds a write stamped that far ahead: made while this clock ran ahead, or "
            f"the clock was set back since), and peers drop writes stamped more than {limit} h "
            f"ahead of theirs; set this machine's clock right if it is wrong, else writes are "
            f"taken again in {_hours(stamp.wall - now - MAX_AHEAD_MS)} h, or at once after "
            f"`meshactors network remove {self.network} --purge` and joining again (which "
            f"forgets this copy of the map, and the network's roster and messages here)",
        )

    def _full(self) -> OpError:
        """The refusal of a write that would take the map past its limits."""
        return OpError(
            ErrorCode.STATE_FULL,
            f"{self.network}'s state holds at most {MAX_KEYS} keys (deleted ones count) "
            f"and {MAX_STATE_BYTES} bytes",
        )

    # -- frames (run in core's task: queue them) ----------------------------------------------

    def _queue(self, sender: str, frame: Frame) -> None:
        """Queue a state frame for the state task; a full queue drops it, and the state task
        is told to catch up with its sender (summaries both ways)."""
        try:
            self._send.send_nowait(_FromPeer(sender, frame))
        except trio.WouldBlock:
            self.dropped_in_core["queue_full"] += 1
            self._tell_behind(sender)

    def _tell_behind(self, sender: str) -> None:
        """Tell the state task that frames of `sender` were dropped, once until it takes the
        notice: it takes every notice at once after each batch, so an empty channel means
        it took all those told (a full one drops the notice: the periodic sync repairs)."""
        if not self._behind_send.statistics().current_buffer_used:
            self._behind_told.clear()
        if sender in self._behind_told:
            return
        try:
            self._behind_send.send_nowait(sender)
        except trio.WouldBlock:
            self.dropped_in_core["behind_full"] += 1
            return
        self._behind_told.add(sender)

    def on_peer_status(self, device_id: str, status: PeerStatus) -> None:
        """Tell the state task: a peer that becomes active gets our summary (if we hold anything
        it could pull); one that leaves ends its catch-up (a notice a full queue drops, the
        hourly sweep makes good)."""
        left = status is not PeerStatus.ACTIVE
        try:
            self._send.send_nowait(_PeerLeft(device_id) if left else _SendSummary(device_id))
        except trio.WouldBlock:
            self.dropped_in_core["queue_full"] += 1

    # -- the state task -----------------------------------------------------------------------

    async def _work(self) -> None:
        """Work the queue in batches: merge and save together, then answer and send; wake when
        a held pull's pace allows it, to answer it (one deadline for all: no task per pull)."""
        while True:
            batch: list[_Work] = []
            with trio.move_on_at(self._release_at.next_deadline()):
                batch.append(await self._receive.receive())
            batch += take_queued(self._receive, WORK_BATCH - len(batch))
            try:
                await self._work_batch(batch)
            except BaseException:
                # Cut off (core stops) with writes taken and not settled: their ops hear so
                # now, not at their deadline (a save the store had taken may still happen).
                stopped = OpError(ErrorCode.UNAVAILABLE, "the state task stopped; retry")
                for item in batch:
                    if isinstance(item, _OwnWrite):
                        item.done.fail(stopped)  # no-op for one settled already
                raise

    async def _work_batch(self, batch: list[_Work]) -> None:
        # Only this task changes the map, and it serves peers' pulls only after the save: a
        # write of ours is in the map from here until its save is known (reads by ops meanwhile
        # see it), and a peer never gets one whose save failed.
        batch = [item for item in batch if not self._unasked(item)]
        now = wall_ms()
        horizon = now - TOMBSTONE_TTL_MS  # tombstones stamped before it have expired
        expired = 0
        if any(_prunes_first(item) for item in batch):
            expired = len(self.map.prune(horizon))
            self.counters["pruned"] += expired
        if any(isinstance(item, _Prune) for item in batch):
            self._forget_left()
        # Received writes first, then ours, each stamped here: after every stamp this task
        # merged (this batch's too), so ours beats what it replaces and its op is answered
        # with what the map holds (save order is free: a row keeps the winner whatever order
        # entries are saved in).
        merged = self._merge(self._received_entries(batch, now), horizon)
        local: list[tuple[_OwnWrite, Entry, Entry | None]] = []  # and the entry each replaced
        for item in (item for item in batch if isinstance(item, _OwnWrite)):
            entry = self._stamped(item, now)
            if entry is not None:
                local.append((item, entry, self.map.get(entry.key)))
                self.map.merge(entry)
        ours = [entry for _, entry, _ in local]
        expired += sum(entry.deleted and entry.stamp.wall < horizon for entry in merged)
        error = await self._save(merged + ours, horizon if expired else None)
        if error is not None:
            # Our writes did not happen: the map holds what they replaced again (a peer's
            # write they had beaten meanwhile comes back at the next catch-up with its peer).
            for _, entry, previous in reversed(local):
                self.map.undo(entry, previous)
            ours = []
        for entry in merged + ours:  # in the order they changed the map
            self._publish(entry)
        for item, entry, _ in local:
            if error is None:
                item.done.resolve(self._view(entry))
            else:
                item.done.fail(error)
        if ours:
            await self._put_to_all(ours)
        for work in batch:
            match work:
                case _SendSummary(peer=peer, ask=ask) if len(self.map):
                    # (an empty map has nothing to offer; a peer with entries sends us theirs)
                    await self._send_to(peer, StateSummary(self.map.summary(), ask))
                case _FromPeer(sender=sender, frame=frame):
                    await self._answer(sender, frame)
                case _PeerLeft(peer=peer):
                    self._pulls.pop(peer, None)
                    self._fruitless.pop(peer, None)
                    self._held.pop(peer, None)  # (its pace stays until the hourly sweep)
        await self._release()
        for peer in take_queued(self._behind_receive, BEHIND_QUEUE):  # (each told once)
            await self._send_to(peer, StateSummary(self.map.summary(), ask=True))

    def _stamped(self, write: _OwnWrite, now: int) -> Entry | None:
        """Our write stamped by the clock at `now`, after the entry it replaces; None when it
        is refused (its op told): a stamp more than MAX_AHEAD_MS past `now`, which every peer
        would drop (the clock started from a saved stamp that far ahead, up to the end of its
        range: `conflict`), or a map it would take past the limits (`state_full`)."""
        old = self.map.get(write.unstamped.key)
        stamp = self.clock.tick(now, old.stamp if old else ZERO)
        if stamp.wall - now > MAX_AHEAD_MS:  # (every stamp out of range is)
            write.done.fail(self._clock_ahead(stamp, now))
            return None
        if not self.map.fits(write.unstamped):
            write.done.fail(self._full())
            return None
        return attrs.evolve(write.unstamped, stamp=stamp)

    async def _save(self, changed: list[Entry], expired_before: int | None) -> OpError | None:
        """Save the entries that changed the map, and with `expired_before` delete the rows of
        expired tombstones; the error its callers get if that failed (counted: the entries
        are `unsaved`)."""
        if not changed and expired_before is None:
            return None
        save = functools.partial(
            save_state, network=self.network, entries=changed, expired_before=expired_before
        )
        try:
            await self.store.call(save, what="save state")
        except Exception as exc:
            self.dropped["unsaved"] += len(changed)
            log.warning("state not saved", network=self.network, error=str(exc))
            return OpError(ErrorCode.STORAGE, f"the state was not saved: {exc}")
        return None

    def _merge(self, entries: list[Entry], horizon: int) -> list[Entry]:
        """Merge received entries; the ones that changed the map (the last of each key). A
        tombstone stamped before `horizon` ends the key it beats and is not kept."""
        changed: dict[str, Entry] = {}
        for entry in entries:
            if not self.map.fits(entry, slack=MERGE_SLACK):
                self.dropped["over_limit"] += 1
                continue
            self.clock.observe(entry.stamp)
            if self.map.merge(entry, expired_before=horizon):
                changed[entry.key] = entry
        self.counters["merged"] += len(changed)
        return list(changed.values())

    def _unasked(self, item: _Work) -> bool:
        """Whether `item` is a page that answers no pull we have open with its sender (the
        pull id and the sender must match), counted `stale_page` and dropped whole: a page
        carries others' writes, so only a peer we pull from may bring them (checked against
        the pulls open as the batch begins; one the batch's work ends later was asked)."""
        if not isinstance(item, _FromPeer) or not isinstance(item.frame, StatePage):
            return False
        current = self._pulls.get(item.sender)
        if current is not None and current.id == item.frame.pull:
            return False
        self.dropped["stale_page"] += 1
        return True

    def _received_entries(self, batch: list[_Work], now: int) -> list[Entry]:
        """The entries of received puts and pages from authors that may write them, stamped
        no more than MAX_AHEAD_MS past our clock at `now` (the refused ones counted): a stamp
        far ahead would drag our clock with it, up to where no stamp is valid."""
        taken: list[Entry] = []
        for item in batch:
            if not isinstance(item, _FromPeer) or not isinstance(item.frame, StatePut | StatePage):
                continue
            self.counters["frames_received"] += 1
            own_only = isinstance(item.frame, StatePut)
            refusals: dict[str, str | None] = {}  # by author: one check per frame and author
            for wire in item.frame.entries:
                if wire.by not in refusals:
                    refusals[wire.by] = self._refusal(item.sender, wire.by, own_only=own_only)
                refused = refusals[wire.by]
                if refused is not None:
                    self.dropped[refused] += 1
                    continue
                try:
                    entry = wire.entry()
                except BadEntry as bad:
                    self.dropped[bad.reason] += 1
                    continue
                if entry.stamp.wall > now + MAX_AHEAD_MS:
                    self.dropped["future_stamp"] += 1
                    continue
                taken.append(entry)
        return taken

    def _refusal(self, sender: str, author: str, *, own_only: bool) -> str | None:
        """Why a peer's writes by `author` are not taken (a counter name), or None: a put
        carries only the sender's own writes, and every write passes the writer check."""
        if own_only and author != sender:
            return "not_author"
        if not self.may_write(sender, author):
            return "not_writer"
        return None

    async def _answer(self, sender: str, frame: Frame) -> None:
        """What a received frame asks of us: a pull, the next pull, our summary."""
        match frame:
            case StateSummary(digests=digests, ask=ask):
                buckets = self.map.differing(digests)
                summaries = (digests, self.map.summary())
                if buckets and self._fruitless.get(sender) == summaries:
                    # The same two maps as at a catch-up that changed nothing here (what it
                    # brought lost, or was over the limits): another would change nothing.
                    self.counters["pulls_skipped"] += 1
                elif buckets:
                    self._pull_ids = (self._pull_ids + 1) % MAX_PULL_ID
                    self._pulls[sender] = _Catchup(
                        self._pull_ids,
                        buckets,
                        summaries,
                        self.map.changes,
                        self._transient_refusals(),
                    )
                    self.counters["pulls"] += 1
                    await self._send_to(sender, StatePull(self._pull_ids, buckets))
                if ask and buckets:  # equal maps: neither side has anything to pull
                    await self._send_to(sender, StateSummary(self.map.summary()))
            case StatePull():
                await self._serve(sender, frame)
            case StatePage(pull=pull, entries=entries, more=more):
                self.counters["pages_pulled"] += 1  # (asked: `_unasked` dropped the others)
                current = self._pulls.get(sender)
                if current is None or current.id != pull:
                    return  # its pull ended earlier in this batch (a new summary, a leave)
                if more and entries:
                    await self._send_to(sender, StatePull(pull, current.buckets, entries[-1].key))
                else:
                    del self._pulls[sender]
                    self._settle(sender, current)

    async def _serve(self, sender: str, pull: StatePull) -> None:
        """Answer a pull with a page if the sender's pace allows it now; else hold the pull
        until it does, the latest one per peer (one it replaces is dropped, `pull_paced`): a
        catch-up has one pull in flight, so it is slowed to the pace, never cut."""
        pace = self._paces.setdefault(sender, TokenBucket(PULL_PACE_BYTES, PULL_PACE_BURST))
        now = trio.current_time()
        if (wait := pace.delay(now)) > TOKEN_ROUNDING:
            held = self._held.get(sender)
            if held is not None:  # the latest waits in its place, until the same time
                self.dropped["pull_paced"] += 1
                self._held[sender] = attrs.evolve(held, pull=pull)
            else:
                self._held[sender] = _Held(pull, now + wait)
                self._release_at.add(now + wait, sender, len(self._held), self._held_by_time)
            return
        found, more = self.map.page(pull.buckets, pull.after, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
        pace.spend(now, PAGE_COST + sum(entry.wire_size for entry in found))
        self.counters["pages_served"] += 1
        entries = [WireEntry.of(entry) for entry in found]
        await self._send_to(sender, StatePage(pull.pull, entries, more))

    def _held_by_time(self) -> list[tuple[float, str]]:
        """The held pulls' (due, peer): what `_release_at` is rebuilt from."""
        return [(held.due, peer) for peer, held in self._held.items()]

    async def _release(self) -> None:
        """Answer the held pulls their paces allow now (a wake-up of a pull answered or
        forgotten since, or held again later, finds none due)."""
        now = trio.current_time() + TOKEN_ROUNDING  # those due within a rounding: together
        for peer in self._release_at.due(now):
            held = self._held.get(peer)
            if held is not None and held.due <= now:
                del self._held[peer]
                await self._serve(peer, held.pull)

    def _forget_left(self) -> None:
        """Forget what is kept by peer of peers no longer active: paces, so those kept are of
        peers active since the last sweep (one that comes back starts with a full burst, at
        most once a sweep), and whatever a leave notice dropped by a full queue left."""
        active = set(self.wire.active_peers())
        self._paces = {peer: pace for peer, pace in self._paces.items() if peer in active}
        self._pulls = {peer: pull for peer, pull in self._pulls.items() if peer in active}
        self._fruitless = {peer: done for peer, done in self._fruitless.items() if peer in active}
        self._held = {peer: held for peer, held in self._held.items() if peer in active}

    def _settle(self, sender: str, done: _Catchup) -> None:
        """Note a finished catch-up from `sender` that changed nothing in our map: every entry
        it brought met the map as it is and lost or was over the limits, so while both
        summaries stay the same, pulling again would change nothing either (members past the
        limits may differ that way for good). One with an entry refused for a reason that
        may go away (TRANSIENT_REFUSALS, by anyone's frame meanwhile) is not noted: the
        next pull may take it."""
        if (self.map.changes, self._transient_refusals()) == (done.changes, done.refused):
            self._fruitless[sender] = done.summaries
        else:
            self._fruitless.pop(sender, None)

    def _transient_refusals(self) -> int:
        """How many received entries were refused for a reason that may not hold later."""
        return sum(self.dropped[reason] for reason in TRANSIENT_REFUSALS)

    async def _put_to_all(self, entries: list[Entry]) -> None:
        """Send our writes to every active peer."""
        frames = [StatePut(page) for page in pages(entries)]
        for peer in self.wire.active_peers():
            for frame in frames:
                await self._send_to(peer, frame)

    async def _send_to(self, peer: str, frame: Frame) -> None:
        try:
            await self.wire.send(peer, frame)
        except OpError as failed:  # it left meanwhile: it catches up when it is back
            self.dropped[f"send_{failed.code.value}"] += 1
            return
        self.counters[f"sent_{frame.tag}"] += 1

    async def _sync_loop(self) -> None:
        """Active peers take turns (meshactors/turns.py) to get our summary, asking for theirs:
        a write lost on the way (a full queue, a link that dropped) is caught up then. Most
        peers hold what one missed, so turns repair as a round to all would, at a cost per
        second that does not grow with the network (a round to 300 peers every minute was
        3,000 frames a second of 4 KiB summaries across a 300-daemon mesh)."""
        await take_turns(
            self.wire.active_peers, self._ask_summary, interval=SYNC_INTERVAL, rate=SYNC_RATE
        )

    async def _prune_loop(self) -> None:
        """Queue a sweep for expired tombstones every PRUNE_INTERVAL (`run` queues the first)."""
        while True:
            await trio.sleep(PRUNE_INTERVAL)
            self._queue_prune()

    def _queue_prune(self) -> None:
        """Queue a sweep for the state task (a full queue skips this one: the next comes)."""
        try:
            self._send.send_nowait(_Prune())
        except trio.WouldBlock:
            self.dropped["queue_full"] += 1

    async def _ask_summary(self, peer: str) -> None:
        """Queue a summary asking for the peer's (the state task sends it)."""
        try:
            self._send.send_nowait(_SendSummary(peer, ask=True))
        except trio.WouldBlock:
            self.dropped["queue_full"] += 1

    def _publish(self, entry: Entry) -> None:
        self.events.publish(CHANGED, self._view(entry))

    def _view(self, entry: Entry) -> dict[str, Any]:
        return {
            "network": self.network,
            "key": entry.key,
            "value": entry.value,
            "by": entry.by,
            "version": entry.version,
            "deleted": entry.deleted,
        }


def _prunes_first(item: _Work) -> bool:
    """Whether a batch with `item` sweeps expired tombstones first: the hourly sweep, and any
    summary sent or compared, so two members' digests never differ by tombstones one has
    swept and the other has not yet (they would pull whole buckets for nothing)."""
    return isinstance(item, _Prune | _SendSummary) or (
        isinstance(item, _FromPeer) and isinstance(item.frame, StateSummary)
    )


def _hours(ms: int) -> str:
    """Milliseconds as hours, to a tenth."""
    return f"{ms / 3_600_000:,.1f}"


def _checked(check: Callable[[str], object], text: str) -> None:
    """Run a key check; its BadEntry as the client's error."""
    try:
        check(text)
    except BadEntry as bad:
        raise _client_error(bad) from None


def _client_error(bad: BadEntry) -> OpError:
    """A refused key or value as the client's error: a value too large is
    `payload_too_large`, anything else `invalid_params`."""
    if bad.reason == "value_too_large":
        return OpError(ErrorCode.PAYLOAD_TOO_LARGE, str(bad))
    return OpError(ErrorCode.INVALID_PARAMS, str(bad))
