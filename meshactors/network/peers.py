"""The peer table, a part of a network's `core` actor: sealed handshake, roster and approval,
presence, rtt, capabilities, profile.

Core hands it everything the link hears (presence, batches of sealed records) and runs ops'
commands on it in core's task, so the peer table changes in one task only. A peer is `active`
when both sides approved it, it is present at the broker and speaks our protocol major; only
active peers' application frames reach the registered handlers.
"""

from __future__ import annotations

import collections
import enum
import functools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import structlog
import trio

from meshactors._version import __version__
from meshactors.broker.limits import TokenBucket
from meshactors.clock import wall_ms
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.network.calls import DeadlineHeap
from meshactors.network.link import (
    LINK_ROLE,
    InboundRecords,
    LinkDown,
    LinkEvent,
    LinkLost,
    LinkOutbound,
    LinkStatus,
    LinkUp,
)
from meshactors.network.rejected import RejectedFrames
from meshactors.network.sealing import FrameRejected, OpenerMemory, PeerCrypto
from meshactors.store import networks as roster_db
from meshactors.store.actor import StoreActor
from meshactors.turns import take_turns
from meshactors.wire.broker import PresenceJoin, PresenceLeave, Undeliverable
from meshactors.wire.device_id import (
    SHORT_ID,
    InvalidDeviceId,
    device_id_from_public_key,
    device_name,
    is_usable_device_id,
    public_key_from_device_id,
)
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import (
    FEATURES,
    PROTOCOL_VERSION,
    Approval,
    BadPeerFrame,
    Bye,
    Capabilities,
    Caps,
    Frame,
    Hello,
    IncompatiblePeer,
    Ping,
    Pong,
    Profile,
    ProfileFrame,
    converter,
    decode_frame,
    encode_for,
    encode_frame,
)

log = structlog.get_logger("meshactors.peers")

T = TypeVar("T")

PEER_PING_INTERVAL = 15.0  # seconds between rtt probes to one handshaken peer, at the least
PING_RATE = 1.0  # rtt probes per second per network at most, however many peers it holds
ROSTER_BATCH = 256  # auto-approvals held before they are saved, even while link events queue
MAX_PEERS = 1024  # peers tracked per network (the broker admits 256 by default)
# pending roster entries kept per network (strangers: devices seen, never approved or denied);
# past it, or when the table is full, the one seen longest ago (its last hello; after a
# restart, first seen longest ago) that is not present is forgotten
MAX_STRANGERS = 256
# devices present at the broker that never said hello to us, kept per network: past it, or
# when the table is full, the one that joined longest ago is let go (a broker can make up joins)
MAX_SILENT_PEERS = 256
# status events (peer_sighted, peer_pending, ...) told of one peer at once; past them, one more
# every STATUS_EVENT_INTERVAL seconds: a peer whose status flaps (hellos of two majors, Bye and
# hello, a broker's joins and leaves) changes its status each time but is told at that pace, its
# latest status once its turn comes (a session and one reconnection fit in the burst)
STATUS_EVENT_BURST = 6
STATUS_EVENT_INTERVAL = 5.0
# status events of silent devices (announced by the broker, no hello of theirs opened) told at
# once, all of them together, per network; past them, one every STATUS_EVENT_INTERVAL: a broker
# can make up joins and leaves of new ids, each a fresh table entry with no pace of its own
SILENT_EVENT_BURST = 16
# peer_capabilities and peer_profile events told of one peer at once; past them, one every
# DETAIL_EVENT_INTERVAL seconds: a peer that changes its advert or profile over and over keeps
# the latest in its state (peers_list shows it) and each kind's latest is told once the pace
# allows, the changes it replaced while held never (counted `details_untold`), so it cannot
# push the others' events out of the event log (a program's handful of changes fit the burst)
DETAIL_EVENT_BURST = 16
DETAIL_EVENT_INTERVAL = 1.0
# network_phase events told of one network at once; past them, one every STATUS_EVENT_INTERVAL:
# a broker link that flaps (up, down, up) changes the phase each time but is told at that pace,
# its latest phase once its turn comes (a reconnection's degraded, alone, active fit the burst)
PHASE_EVENT_BURST = 6
PHASE_UNTOLD = "phase_untold"  # phase changes not told as they happened (core's `dropped`)
DETAILS_UNTOLD = "details_untold"
CAPABILITIES_EVENT = "peer_capabilities"
PROFILE_EVENT = "peer_profile"
DETAIL_EVENTS = {CAPABILITIES_EVENT: "capabilities", PROFILE_EVENT: "profile"}  # their field
TOKEN_ROUNDING = 1e-9  # seconds of a pace's wait taken as none (float rounding at the wake time)
REJECTED_NON_MEMBER = "rejected_non_member"  # frames of a device a closed network keeps out
FROM_DENIED = "from_denied"  # capabilities and profiles of a device we denied (open network)
CONTROL_PLANE_ROLE = "control-plane"  # hidden from peers_list unless `all`
CAPABILITIES_KEY = "capabilities"  # local_settings key of our advert in a network
PROFILE_KEY = "profile"  # local_settings key of our profile (per network, or GLOBAL)

AppHandler = Callable[[str, Frame], None]  # (sender device id, frame); must not block
ControlHandler = Callable[[str, Frame], Awaitable[None]]  # a handshaken peer's control frame
StatusListener = Callable[[str, "PeerStatus"], None]  # (device id, new status); must not block


class PeerStatus(enum.StrEnum):
    """Where a peer stands, as peers_list shows it."""

    SIGHTED = "sighted"  # present at the broker, no hello yet
    PENDING = "pending"  # handshaken, but one side has not approved
    DENIED = "denied"  # we denied it
    ACTIVE = "active"  # both approved: application traffic flows
    INCOMPATIBLE = "incompatible"  # its protocol major differs from ours
    OFFLINE = "offline"  # known (roster), not present


STATUS_EVENTS = {
    PeerStatus.SIGHTED: "peer_sighted",
    PeerStatus.PENDING: "peer_pending",
    PeerStatus.DENIED: "peer_denied",
    PeerStatus.ACTIVE: "peer_active",
    PeerStatus.INCOMPATIBLE: "peer_incompatible",
    PeerStatus.OFFLINE: "peer_left",
}


class Phase(enum.StrEnum):
    """A network's phase, as networks_list shows it."""

    CONNECTING = "connecting"  # the link has not been up yet
    ALONE = "alone"  # link up, no active peer
    ACTIVE = "active"  # link up, at least one active peer
    DEGRADED = "degraded"  # the link was up and dropped; reconnecting
    STOPPED = "stopped"  # the network is not running


@attrs.frozen
class Held:
    """A peer's status event, or its detail events of `kinds`, held back: the trio time they may
    be told, and their place among those held (kept while they wait, so the retell loop can
    tell the one held longest first)."""

    due: float
    place: int
    kinds: tuple[str, ...] = ()  # the detail events held, in the order they were


@attrs.define(eq=False)
class PeerState:
    """What we know of one peer in this network."""

    device_id: str
    public_key: bytes
    crypto: PeerCrypto
    role: str | None = None  # the role it announced (broker or hello); None until heard
    present: bool = False
    hello: Hello | None = None
    capabilities: Capabilities | None = None
    profile: Profile | None = None
    remote_approval: str = "pending"
    incompatible: str | None = None
    rtt_ms: float | None = None
    last_seen_ms: int | None = None
    status: PeerStatus = PeerStatus.OFFLINE
    told: PeerStatus = PeerStatus.OFFLINE  # the status its last status event said
    status_events: TokenBucket = attrs.field(factory=lambda: _status_pace(STATUS_EVENT_BURST))
    detail_events: TokenBucket = attrs.field(
        factory=lambda: TokenBucket(1 / DETAIL_EVENT_INTERVAL, DETAIL_EVENT_BURST)
    )
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)
    rejected: RejectedFrames = attrs.field(factory=RejectedFrames)  # bad frames it sent

    def forget_session(self) -> None:
        """The peer left the broker: what it told us in this presence no longer holds."""
        self.present = False
        self.hello = None
        self.remote_approval = "pending"
        self.incompatible = None


class Gate(Protocol):
    """What decides who may be active in a closed network (its membership log), in core."""

    @property
    def closed(self) -> bool:
        """Whether membership, not the roster, decides who is active here."""

    def approval(self, device_id: str) -> str:
        """`approved` for a member (while we are one), else `denied`."""

    async def on_handshake(self, device_id: str) -> None:
        """A peer's hello arrived: compare logs, present an invite."""

    def summary(self) -> dict[str, Any]:
        """What networks_list shows of the membership."""

    def approved(self) -> list[str]:
        """The devices `approval` says `approved` for, offline ones too, us aside."""

    def undeliverable(self) -> frozenset[str] | None:
        """The devices evicted from the network, or None once this device is evicted."""


@attrs.define(eq=False)
class Peers:
    """One network's peer table, a part of its `core` actor: core hands it the link's events
    and runs ops' commands on it, and only core's task runs this code."""

    network: str
    identity: Identity
    store: StoreActor
    events: EventHub
    auto_approve: bool = False
    role: str = LINK_ROLE  # the role the link announces, sent in our hellos
    phase: Phase = Phase.CONNECTING
    _phase_told: Phase = Phase.CONNECTING  # the phase the last network_phase event said
    _phase_due: float = math.inf  # trio time the retell loop tells a held phase (inf: none)
    _phase_events: TokenBucket = attrs.field(factory=lambda: _status_pace(PHASE_EVENT_BURST))
    capabilities: Capabilities = attrs.field(factory=Capabilities)
    _global_profile: Profile = attrs.field(factory=Profile)
    _network_profile: Profile | None = None
    _peers: dict[str, PeerState] = attrs.field(factory=dict)
    # openers of the peers let go: not reset by `load`, so a core restart keeps them too
    replay_memory: OpenerMemory = attrs.field(factory=OpenerMemory)
    _by_key: dict[bytes, PeerState] = attrs.field(factory=dict)  # the same peers, by public key
    _active: set[str] = attrs.field(factory=set)  # device ids of the active peers
    _roster: dict[str, roster_db.RosterEntry] = attrs.field(factory=dict)
    # device ids of the roster's pending entries, the stranger seen longest ago first (moved to
    # the end by each hello; a load orders them by first seen)
    _strangers: dict[str, None] = attrs.field(factory=dict)
    # device ids of the peers with no roster entry present at the broker that never said
    # hello, or said Bye since (it leaves the table when it leaves the broker), the one counted
    # longest ago first: let go first when the table is full
    _silent: dict[str, None] = attrs.field(factory=dict)
    # the pace of status events about silent devices, all of them together
    _silent_events: TokenBucket = attrs.field(factory=lambda: _status_pace(SILENT_EVENT_BURST))
    # device ids of the peers whose latest status is not told yet (their pace held it back),
    # each with the trio time it may be and its place: the retell loop tells it then
    _untold: dict[str, Held] = attrs.field(factory=dict)
    _untold_details: dict[str, Held] = attrs.field(factory=dict)  # on the same heap and loop
    _holds: int = 0  # status and detail events held back so far: the next one's place
    _retell_at: DeadlineHeap = attrs.field(factory=DeadlineHeap)  # the same, by time
    _retell: trio.CancelScope | None = None  # the retell loop's wait, woken by an earlier time
    # auto-approvals and the roles peers announced, not saved yet (saved in batches)
    _unsaved: dict[str, roster_db.RosterEntry] = attrs.field(factory=dict)
    # strangers' entries forgotten to make room, not deleted yet (deleted with those batches)
    _unsaved_removals: list[roster_db.RosterEntry] = attrs.field(factory=list)
    _app_handlers: dict[str, AppHandler] = attrs.field(factory=dict)
    _control_handlers: dict[str, ControlHandler] = attrs.field(factory=dict)
    gate: Gate | None = None  # a closed network's membership; None: the roster decides
    status_listeners: list[StatusListener] = attrs.field(factory=list)  # told of status changes
    _link_was_up: bool = False
    _outbound: LinkOutbound | None = None  # the up link's queue, from LinkUp to LinkLost
    link_status: LinkStatus = attrs.field(factory=lambda: LinkStatus("idle", None, None))
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)
    rejected_frames: int = 0  # frames that failed to open or decode, from every peer

    @property
    def profile(self) -> Profile:
        """Our effective profile here: this network's own, else the global one."""
        return self._network_profile or self._global_profile

    def figures(self) -> dict[str, object]:
        by_status = collections.Counter(peer.status.value for peer in self._peers.values())
        return {
            "phase": self.phase.value,
            "peers": {status.value: by_status[status.value] for status in PeerStatus},
            "roster": len(self._roster),
            "dropped": dict(self.dropped),
            "rejected_frames": self.rejected_frames,
            "rejected_non_member": self.dropped[REJECTED_NON_MEMBER],
            "openers_kept": len(self.replay_memory),
            "openers_forgotten": self.replay_memory.forgotten,
        }

    @property
    def closed(self) -> bool:
        """Whether membership, not the roster, decides who is active here."""
        return self.gate is not None and self.gate.closed

    @property
    def shown_phase(self) -> str:
        """The phase as status shows it: stopped while the link is not running, or once this
        device was evicted from the closed network."""
        if self.link_status.state in ("idle", "stopped") or (
            self.gate is not None and self.gate.summary().get("evicted")
        ):
            return Phase.STOPPED.value
        return self.phase.value

    def summary(self) -> dict[str, Any]:
        """This network's phase, link and peer counts, for status and networks_list."""
        error = self.link_status.error
        return {
            "phase": self.shown_phase,
            "link": self.link_status.state,
            "link_error": None if error is None else error.view(),
            "broker": self.link_status.url,
            "peers": self.figures()["peers"],
            **(
                {"membership": self.gate.summary()} if self.gate is not None and self.closed else {}
            ),
        }

    # -- what core's other parts call, and ops by asking core ---------------------------------

    def register_app_handler(self, tag: str, handler: AppHandler) -> None:
        """Route application frames of type `tag` from active peers to `handler`."""
        self._app_handlers[tag] = handler

    def register_control_handler(self, tag: str, handler: ControlHandler) -> None:
        """Route control frames of type `tag` from handshaken peers to `handler` (in core)."""
        self._control_handlers[tag] = handler

    def handshaken(self) -> list[str]:
        """Device ids of the peers present and handshaken now."""
        return [p.device_id for p in self._peers.values() if _handshaken(p)]

    def announces(self, device_id: str, feature: str) -> bool:
        """Whether a peer announced `feature` in its hello."""
        peer = self._peers.get(device_id)
        return peer is not None and feature in _features(peer)

    async def send_control(self, device_id: str, frame: Frame) -> None:
        """Send a control frame to a handshaken peer, best effort (counted when it cannot)."""
        peer = self._peers.get(device_id)
        if peer is None or not _handshaken(peer):
            self.dropped["not_handshaken"] += 1
            return
        await self._try_send(peer, frame)

    async def reapprove(self, device_ids: Sequence[str]) -> None:
        """The gate changed its mind about these devices: tell each handshaken one where it
        stands now and recompute its status (a member turned away is cut off at once)."""
        for device_id in device_ids:
            peer = self._peers.get(device_id)
            if peer is None:
                continue
            if _handshaken(peer):
                await self._try_send(peer, Approval(self._local_approval(device_id)))
            self._update(peer)
        self._update_phase()

    async def send_app(self, device_id: str, frame: Frame) -> None:
        """Seal an application frame to an active peer and queue it on the link.

        Raises OpError no_such_peer, peer_not_active or link_down.
        """
        await self.send_app_frames(device_id, [frame])

    async def send_app_frames(self, device_id: str, frames: Sequence[Frame]) -> None:
        """Seal application frames to an active peer and queue them on the link, in order,
        in one go: what is queued together leaves in one WebSocket message (the link's
        writer batches). Raises OpError no_such_peer, peer_not_active or link_down.
        """
        peer = self._active_peer(device_id)
        features = _features(peer)
        try:
            for frame in frames:
                for data in encode_for(frame, features):
                    await self._send_encoded(peer, data)
        except LinkDown as exc:
            raise OpError(ErrorCode.LINK_DOWN, str(exc)) from None

    def send_app_nowait(self, device_id: str, frame: Frame) -> bool:
        """Seal an application frame to an active peer and hand it to the link without
        waiting; False (nothing sent) when that would take a wait or several records.

        Raises OpError no_such_peer, peer_not_active or link_down.
        """
        peer = self._active_peer(device_id)
        encoded = encode_for(frame, _features(peer))
        if len(encoded) != 1:
            return False
        try:
            return self._link_queue().send_nowait(peer.public_key, peer.crypto.seal(encoded[0]))
        except LinkDown as exc:
            raise OpError(ErrorCode.LINK_DOWN, str(exc)) from None

    def _active_peer(self, device_id: str) -> PeerState:
        """The peer application frames may go to (OpError no_such_peer, peer_not_active)."""
        peer = self._peers.get(device_id)
        if peer is not None and peer.status is PeerStatus.ACTIVE:
            return peer
        evicted = self._evicted(device_id)
        if peer is None:
            raise OpError(
                ErrorCode.NO_SUCH_PEER, evicted or f"no peer {device_id} in {self.network}"
            )
        raise OpError(ErrorCode.PEER_NOT_ACTIVE, evicted or self._not_active(peer))

    def _not_active(self, peer: PeerState) -> str:
        """Why a known peer takes no application traffic, with what would make it active: a
        user told only `pending` cannot tell which side has to approve."""
        said = f"peer {device_name(peer.device_id, self._label(peer))} is {peer.status.value}"
        said += f" in {self.network}, not active"
        if peer.status not in (PeerStatus.PENDING, PeerStatus.DENIED):
            return said
        local, short = self._local_approval(peer.device_id), peer.device_id[:SHORT_ID]
        if self.closed and local != "approved":
            return f"{said}: it is not a member: meshactors members grant {short} -n {self.network}"
        if self.closed:
            return f"{said}: it does not count us a member yet (its membership log is behind)"
        if local != "approved":
            us = "we denied it" if local == "denied" else "we have not approved it"
            return f"{said}: {us}: meshactors roster approve {short} -n {self.network}"
        ours = self.identity.device_id[:SHORT_ID]
        return (
            f"{said}: it has not approved us yet: run meshactors roster approve {ours}"
            f" -n {self.network} on that device"
        )

    def _evicted(self, device_id: str) -> str | None:
        """Why `device_id` can never be reached here if an evict is the reason, else None."""
        if self.gate is None:
            return None
        gone = self.gate.undeliverable()  # nobody in an open network
        if gone is None:
            return f"this device was evicted from {self.network}"
        return f"{device_id} was evicted from {self.network}" if device_id in gone else None

    def active_peers(self) -> list[str]:
        """Device ids of the peers application traffic may go to now."""
        return [p.device_id for p in self._peers.values() if p.status is PeerStatus.ACTIVE]

    def recipients(self, tag: str | None) -> list[str]:
        """Whom a durable send to `*` (`tag` None) or `@tag` names, by device id: the approved
        peers now known, with `@tag` those whose last advert carries the tag. In a closed
        network `*` is every member too (an offline one has no place in the table, unlike a
        roster entry); an offline member's tags are unknown, so `@tag` leaves it out."""
        named = {
            device_id
            for device_id, peer in self._peers.items()
            if self._local_approval(device_id) == "approved"
            and (tag is None or (peer.capabilities is not None and tag in peer.capabilities.tags))
        }
        if tag is None and self.gate is not None and self.gate.closed:
            named.update(self.gate.approved())
        return sorted(named)

    def list_peers(self, *, include_all: bool) -> list[dict[str, Any]]:
        """peers_list: visible peers (all of them with `include_all`), by device id."""
        return [
            self._describe(peer)
            for peer in sorted(self._peers.values(), key=lambda p: p.device_id)
            if include_all or (_visible(peer) and not self._closed_out(peer))
        ]

    def list_roster(self) -> list[dict[str, Any]]:
        """roster_list: every device we approved, denied or saw, with its live status."""
        rows = []
        for entry in sorted(self._roster.values(), key=lambda e: e.device_id):
            peer = self._peers.get(entry.device_id)
            rows.append(
                {
                    "device_id": entry.device_id,
                    "label": entry.label,
                    "state": entry.state,
                    "updated_at_ms": entry.updated_at,
                    "role": entry.role,
                    "status": peer.status.value if peer else PeerStatus.OFFLINE.value,
                }
            )
        return rows

    async def approve(self, device_id: str, label: str | None) -> dict[str, Any]:
        """roster_approve: approve a device (seen or not yet); it becomes active once it agrees."""
        return await self._set_roster(device_id, "approved", label)

    async def deny(self, device_id: str) -> dict[str, Any]:
        """roster_deny: refuse a device; it is never active until approved again."""
        return await self._set_roster(device_id, "denied", None)

    async def forget(self, device_id: str) -> bool:
        """roster_remove: forget a device's approval; it is cut off at once (conflict in a
        closed network, which keeps no roster: it would tell a member we were pending)."""
        self._refuse_if_closed()
        await self.save_unsaved()
        known = await self.store.call(
            functools.partial(roster_db.remove_roster, network=self.network, device_id=device_id),
            what="remove from roster",
        )
        self._pop_entry(device_id)
        peer = self._peers.get(device_id)
        if peer is not None:
            if peer.present and peer.hello is not None:
                await self._try_send(peer, Approval("pending"))
            self._update(peer)
            if not peer.present:
                self._drop_peer(peer)
            elif peer.hello is None:  # present, never heard: silent again, let go first
                self._keep_silent(device_id)
        self._update_phase()
        return bool(known)

    async def advertise_saved(self) -> None:
        """Take our capabilities and profiles as saved now and tell peers what changed. The
        ops save, then ask this of core, which runs one ask at a time: whatever order
        concurrent saves and asks come in, the last advert reads the last save, so peers
        end with what profile_get answers."""
        capabilities, profile = self.capabilities, self.profile
        await self._load_settings(background=False)
        if self.capabilities != capabilities:
            caps = Caps(self.capabilities)
            await self._tell_handshaken(lambda _: caps)
        if self.profile != profile:
            shown = ProfileFrame(self.profile.as_shown())
            await self._tell_handshaken(lambda _: shown)

    async def say_bye(self, reason: str) -> None:
        """Tell every handshaken peer we are leaving (best effort: the broker also says so)."""
        await self._tell_handshaken(lambda _: Bye(reason))

    def set_auto_approve(self, value: bool) -> None:
        """Approve devices seen from now on without asking (or stop doing so)."""
        self.auto_approve = value

    # -- core's run ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Roster, capabilities and profiles from the state database; a fresh peer table. Its
        store calls, core's start's own, wait for the store however long it takes."""
        entries = await self.store.background_call(
            functools.partial(roster_db.roster, network=self.network), what="load roster"
        )
        self._roster, self._strangers, self._unsaved, self._unsaved_removals = {}, {}, {}, []
        await self._load_settings(background=True)
        self.hand_over_openers()
        self._peers, self._by_key, self._active, self._silent = {}, {}, set(), {}
        self._untold, self._untold_details, self._retell_at = {}, {}, DeadlineHeap()
        self._link_was_up, self._outbound = False, None
        self.link_status = LinkStatus("idle", None, None)
        self.phase = self._phase_told = Phase.CONNECTING  # told nothing yet (its pace is kept)
        self._phase_due = math.inf
        # the operator's decisions first, then the strangers first seen longest ago first (the
        # roster saves when a stranger was first seen, not when last: a hello would cost a
        # write): past MAX_STRANGERS, or past a full table, those are forgotten
        for entry in sorted(entries, key=lambda e: (e.state == "pending", e.updated_at)):
            self._put_entry(entry)
            if len(self._strangers) > MAX_STRANGERS:
                self._forget_stranger()
            peer = self._peer(entry.device_id)
            if peer is not None:
                peer.status = PeerStatus.OFFLINE
                peer.role = entry.role

    async def _load_settings(self, *, background: bool) -> None:
        """Our capabilities here and our profiles (this network's, the global one), as saved;
        `background` at core's start (`StoreActor.background_call`), not for an op's advert,
        whose client waits (the store's deadline)."""
        call = self.store.background_call if background else self.store.call
        mine = await call(
            functools.partial(roster_db.get_settings, network=self.network), what="load settings"
        )
        shared = await call(
            functools.partial(roster_db.get_settings, network=roster_db.GLOBAL),
            what="load global settings",
        )
        self.capabilities = (
            stored_setting(mine.get(CAPABILITIES_KEY), Capabilities) or Capabilities()
        )
        self._network_profile = stored_setting(mine.get(PROFILE_KEY), Profile)
        self._global_profile = stored_setting(shared.get(PROFILE_KEY), Profile) or Profile()

    async def on_link_event(self, event: LinkEvent) -> None:
        """Take in one thing the link heard: sealed records, presence, the link's status."""
        match event:
            case InboundRecords(records=records):
                for public_key, sealed in records:
                    await self._on_record(public_key, sealed)
            case PresenceJoin(device_id=device_id, role=role):
                await self._on_join(device_id, role)
            case PresenceLeave(device_id=device_id):
                self._on_leave(device_id)
            case LinkUp(url=url, peers=present, outbound=outbound):
                self._link_was_up, self._outbound = True, outbound
                self.link_status = LinkStatus("up", url, None)
                for device_id in list(self._peers):
                    self._on_leave(device_id)
                for device_id, role in present:
                    await self._on_join(device_id, role)
            case LinkLost():
                self._outbound = None
                self.link_status = LinkStatus("backoff", self.link_status.url, None)
                for device_id in list(self._peers):
                    self._on_leave(device_id)
            case LinkStatus() as status:
                self.link_status = status
            case Undeliverable(device_id=device_id):
                self.dropped["undeliverable"] += 1
                self._on_leave(device_id)

    async def settle(self, *, queued: Callable[[], int]) -> None:
        """After each message core handled: the phase it led to; the held roster changes
        (auto-approvals, roles, forgotten strangers) saved once core's inbox is empty
        (`queued()` messages wait in it: counted only while changes are held, not per
        message) or they are many."""
        self._update_phase()
        held = len(self._unsaved) + len(self._unsaved_removals)
        if held and (held >= ROSTER_BATCH or not queued()):
            await self.save_unsaved()

    async def ping_loop(self) -> None:
        """Probe the handshaken peers' rtt in turns (meshactors/turns.py): an idle network
        sends at most PING_RATE probes a second, not one per peer every interval."""
        await take_turns(
            lambda: [p.device_id for p in self._peers.values() if _handshaken(p)],
            self._probe,
            interval=PEER_PING_INTERVAL,
            rate=PING_RATE,
        )

    async def retell_loop(self) -> None:
        """Tell the latest status, capabilities and profile of each peer whose pace held its
        change back, and the network's latest phase, once the pace allows: one task for every
        peer and the phase, so followers never keep a stale one."""
        retells = ((self._untold, self._tell_status), (self._untold_details, self._retell_details))
        while True:
            deadline = min(self._retell_at.next_deadline(), self._phase_due)
            with trio.CancelScope(deadline=deadline) as self._retell:
                await trio.sleep_forever()
            now = trio.current_time() + TOKEN_ROUNDING  # those due within a rounding: together
            if self._phase_due <= now:
                self._tell_phase()
            due = [
                (held.place, device_id, tell)
                for device_id in set(self._retell_at.due(now))
                for untold, tell in retells
                if (held := untold.get(device_id)) is not None and held.due <= now
            ]
            for _, device_id, tell in sorted(due, key=lambda entry: entry[0]):
                tell(self._peers[device_id])

    async def _probe(self, device_id: str) -> None:
        """One rtt probe, if the peer is still handshaken when its turn comes."""
        peer = self._peers.get(device_id)
        if peer is not None and _handshaken(peer):
            await self._try_send(peer, Ping(time.monotonic_ns()))

    def hand_over_openers(self) -> OpenerMemory:
        """Every peer's opener, the table's and those let go, for the table that replaces this
        one (a restarted core's, a rebuilt network's): the broker cannot replay to it what
        this one refused."""
        for peer in self._peers.values():
            self.replay_memory.keep(peer.device_id, peer.crypto.opener)
        return self.replay_memory

    # -- presence and frames ------------------------------------------------------------------

    def _peer(self, device_id: str, crypto: PeerCrypto | None = None) -> PeerState | None:
        """The peer's state, created on first sight (with `crypto` if the caller built it; a
        full table lets silent peers go, then strangers not present, to make room); None for a
        bad id or a table full of others."""
        peer = self._peers.get(device_id)
        if peer is not None:
            return peer
        while len(self._peers) >= MAX_PEERS:
            if not (self._forget_silent() or self._forget_stranger()):
                self.dropped["table_full"] += 1
                if crypto is not None:
                    self.replay_memory.keep(device_id, crypto.opener)
                return None
        if crypto is None and (crypto := self._crypto(device_id)) is None:
            return None
        peer = PeerState(device_id, public_key_from_device_id(device_id), crypto)
        self._peers[device_id] = peer
        self._by_key[peer.public_key] = peer
        return peer

    def _crypto(self, device_id: str) -> PeerCrypto | None:
        """Sealing state for a device the table does not hold (its opener, if it was let go);
        None (counted) for an id that is no usable key."""
        try:
            return PeerCrypto.for_peer(
                self.identity.signing_key, device_id, self.replay_memory.take(device_id)
            )
        except InvalidDeviceId:
            self.dropped["bad_sender"] += 1
            return None

    def _put_entry(self, entry: roster_db.RosterEntry) -> None:
        """Set a device's roster entry; a pending one keeps its place among the strangers."""
        self._roster[entry.device_id] = entry
        self._silent.pop(entry.device_id, None)  # kept for its entry now
        if entry.state == "pending":
            self._strangers.setdefault(entry.device_id)
        else:
            self._strangers.pop(entry.device_id, None)

    def _pop_entry(self, device_id: str) -> None:
        """Take a device out of the roster, its unsaved change too (the saved one is the
        caller's to delete)."""
        self._roster.pop(device_id, None)
        self._strangers.pop(device_id, None)
        self._unsaved.pop(device_id, None)

    def _room_for_stranger(self) -> bool:
        """Whether a new stranger's pending entry fits (under MAX_STRANGERS, else once the
        stranger seen longest ago that is not present is forgotten)."""
        if len(self._strangers) < MAX_STRANGERS or self._forget_stranger():
            return True
        self.dropped["strangers_full"] += 1
        return False

    def _forget_stranger(self) -> bool:
        """Forget the stranger seen longest ago that is not present (its pending entry, here
        and, with the next batch, in the database; its table entry); False when every stranger
        is present. An approved or denied device is never forgotten for another."""
        for device_id in self._strangers:
            peer = self._peers.get(device_id)
            if peer is None or not peer.present:
                break
        else:
            return False
        self._unsaved_removals.append(self._roster[device_id])
        self._pop_entry(device_id)
        if peer is not None:
            self._drop_peer(peer)
        self.dropped["strangers_forgotten"] += 1
        return True

    def _keep_silent(self, device_id: str) -> None:
        """Count a device present that never said hello among the silent, newest last,
        letting the oldest go past MAX_SILENT_PEERS. One counted already keeps its place: it
        could otherwise be the oldest let go, then counted again with no table entry."""
        if device_id in self._silent:
            return
        if len(self._silent) >= MAX_SILENT_PEERS:
            self._forget_silent()
        self._silent[device_id] = None

    def _forget_silent(self) -> bool:
        """Let go of the silent peer counted longest ago (told as `peer_left`); False when
        there is none."""
        device_id = next(iter(self._silent), None)
        if device_id is None:
            return False
        self._gone(self._peers[device_id])
        self.dropped["silent_forgotten"] += 1
        return True

    def _drop_peer(self, peer: PeerState) -> None:
        """Forget a peer we keep no roster entry for, all but its opener (kept in memory). A
        peer last told present is told `peer_left` now, paced or not (its entry, and its pace,
        go): each such event follows one its pace allowed, so the bound holds at twice."""
        if peer.told is not PeerStatus.OFFLINE:
            self._publish_status(peer)
        self._untold.pop(peer.device_id, None)
        if (held := self._untold_details.pop(peer.device_id, None)) is not None:
            self.dropped[DETAILS_UNTOLD] += len(held.kinds)  # never told now
        self._silent.pop(peer.device_id, None)
        self.replay_memory.keep(peer.device_id, peer.crypto.opener)
        del self._peers[peer.device_id]
        del self._by_key[peer.public_key]
        self._active.discard(peer.device_id)

    async def _on_join(self, device_id: str, role: str) -> None:
        """A device the broker says is present: silent until a hello of its own opens (every
        roster entry has its place in the table, so a device not there has none)."""
        silent = device_id not in self._peers
        peer = self._peer(device_id)
        if peer is None:
            return
        if silent:
            self._keep_silent(device_id)
        peer.present = True
        self._set_role(peer, role)
        self._update(peer)
        await self._try_send(peer, self._hello(peer, answer=False))

    def _on_leave(self, device_id: str) -> None:
        """A device left the broker (or the link went): one the table keeps no roster entry
        for leaves it, one that said Bye before too."""
        peer = self._peers.get(device_id)
        if peer is not None and (peer.present or device_id not in self._roster):
            self._gone(peer)

    def _gone(self, peer: PeerState, *, said_bye: bool = False) -> None:
        """The peer is not present now: what it told us in its presence no longer holds, and
        one with no roster entry leaves the table; after a Bye (still at the broker till it
        says the peer left) it is silent till then instead: let go first, it never holds a
        place for good, and keeps its entry, and its pace, if it says hello again."""
        peer.forget_session()
        self._update(peer)
        if peer.device_id in self._roster:
            return
        if said_bye:
            self._keep_silent(peer.device_id)
        else:
            self._drop_peer(peer)

    async def _on_record(self, public_key: bytes, sealed: bytes) -> None:
        """Open and decode one record. Until a sender said hello only a hello is heard from it:
        a frame that fails, or any other before a hello (`before_hello`), is dropped unheard."""
        peer = self._by_key.get(public_key)
        if peer is not None:
            device_id, crypto = peer.device_id, peer.crypto
        else:
            try:
                device_id = device_id_from_public_key(public_key)
            except InvalidDeviceId:
                self.dropped["bad_sender"] += 1
                return
            if (newcomer := self._crypto(device_id)) is None:
                return
            crypto = newcomer
        try:
            frame: Frame | IncompatiblePeer = decode_frame(crypto.open(sealed))
        except (FrameRejected, BadPeerFrame) as bad:
            self._unheard(peer, device_id, crypto)
            self._reject(peer, bad.reason)
            return
        except IncompatiblePeer as skew:
            frame = skew
        said_hello = peer is not None and peer.hello is not None
        if not (said_hello or isinstance(frame, Hello | IncompatiblePeer)):
            self._unheard(peer, device_id, crypto)
            self._drop(peer, "before_hello")
            return
        if peer is None and (peer := self._peer(device_id, crypto)) is None:
            return  # a table full of others
        self._silent.pop(device_id, None)  # it speaks: not let go for a silent one
        if isinstance(frame, IncompatiblePeer):
            await self._on_incompatible(peer, str(frame))
            return
        peer.last_seen_ms = wall_ms()
        if frame.app and peer.status is PeerStatus.ACTIVE:
            self._route_app(peer, frame)  # an active peer's traffic changes no status
            return
        peer.present = True
        await self._on_frame(peer, frame)

    def _unheard(self, peer: PeerState | None, device_id: str, crypto: PeerCrypto) -> None:
        """A frame from `device_id` was dropped unheard: a sender the table does not hold gets
        no entry (a broker's junk from made-up keys makes none; its opener waits in memory, as a
        let-go peer's), and one it holds keeps its state (a silent one is still let go first)."""
        if peer is None:
            self.replay_memory.keep(device_id, crypto.opener)

    def _drop(self, peer: PeerState | None, reason: str) -> None:
        """Count a frame we dropped, per network and per peer (None: one the table does not
        hold)."""
        self.dropped[reason] += 1
        if peer is not None:
            peer.dropped[reason] += 1

    def _reject(self, peer: PeerState | None, reason: str) -> None:
        """Count a bad frame (it failed to open or to decode: no handler saw it) as dropped and
        rejected, and tell subscribers by a `peer_frame_rejected` event at most every
        REJECT_EVENT_INTERVAL per peer; one from a sender the table does not hold (None) is
        counted per network only."""
        self.rejected_frames += 1
        self._drop(peer, reason)
        if peer is None:
            return
        report = peer.rejected.count(reason, trio.current_time())
        if report is not None:
            self._publish("peer_frame_rejected", peer, **report)

    async def _on_frame(self, peer: PeerState, frame: Frame) -> None:
        if isinstance(frame, Hello):
            await self._on_hello(peer, frame)
            return
        match frame:
            case Approval(state=state):
                peer.remote_approval = state
            case Caps() | ProfileFrame() if self._local_approval(peer.device_id) == "denied":
                self._drop(peer, REJECTED_NON_MEMBER if self.closed else FROM_DENIED)
            case Caps(capabilities=capabilities):
                self._set_peer_capabilities(peer, capabilities)
            case ProfileFrame(profile=profile):
                self._set_peer_profile(peer, profile)
            case Ping(token=token):
                await self._try_send(peer, Pong(token))
            case Pong(token=token):
                peer.rtt_ms = round((time.monotonic_ns() - token) / 1e6, 3)
            case Bye():
                self._gone(peer, said_bye=True)
                return
            case _ if frame.app:
                self._route_app(peer, frame)
            case _ if frame.tag in self._control_handlers:
                await self._control_handlers[frame.tag](peer.device_id, frame)
        self._update(peer)

    def _route_app(self, peer: PeerState, frame: Frame) -> None:
        if peer.status is not PeerStatus.ACTIVE:
            self._drop(peer, REJECTED_NON_MEMBER if self._closed_out(peer) else "not_active")
            return
        handler = self._app_handlers.get(frame.tag)
        if handler is None:
            self._drop(peer, "no_handler")
            return
        handler(peer.device_id, frame)

    async def _on_hello(self, peer: PeerState, hello: Hello) -> None:
        first = peer.hello is None
        peer.hello = hello
        self._set_role(peer, hello.role)
        peer.remote_approval = hello.approval
        peer.incompatible = None
        self._set_peer_capabilities(peer, hello.capabilities, announce=not first)
        self._set_peer_profile(peer, hello.profile)
        approved_now = False
        if peer.device_id in self._strangers:  # seen again: the last stranger to be forgotten
            self._strangers[peer.device_id] = self._strangers.pop(peer.device_id)
        if self.closed:
            if first and self._closed_out(peer):
                self._drop(peer, REJECTED_NON_MEMBER)
        elif peer.device_id not in self._roster and (
            self.auto_approve or self._room_for_stranger()
        ):
            state = "approved" if self.auto_approve else "pending"
            entry = attrs.evolve(
                self._roster_entry(peer.device_id, state, hello.label), role=hello.role
            )
            self._put_entry(entry)
            self._unsaved[peer.device_id] = entry
            if state == "approved":
                self._publish("peer_approved", peer, auto=True)
                approved_now = True
        if not hello.answer:
            await self._try_send(peer, self._hello(peer, answer=True))
        elif approved_now:  # our hello it answers said `pending`: it would wait on that forever
            await self._try_send(peer, Approval("approved"))
        await self._try_send(peer, Ping(time.monotonic_ns()))
        self._update(peer)
        if self.gate is not None:
            await self.gate.on_handshake(peer.device_id)

    async def _on_incompatible(self, peer: PeerState, reason: str) -> None:
        peer.present = True
        if peer.incompatible == reason:
            return
        peer.incompatible = reason
        peer.hello = None
        self._update(peer)
        await self._try_send(peer, self._hello(peer, answer=True))

    def _set_role(self, peer: PeerState, role: str) -> None:
        """Use the role a peer announced; a device in the roster keeps it across restarts."""
        peer.role = role
        entry = self._roster.get(peer.device_id)
        if entry is not None and entry.role != role:
            entry = attrs.evolve(entry, role=role)
            self._put_entry(entry)
            self._unsaved[peer.device_id] = entry

    def _set_peer_capabilities(
        self, peer: PeerState, capabilities: Capabilities, *, announce: bool = True
    ) -> None:
        changed = peer.capabilities != capabilities
        peer.capabilities = capabilities
        if changed and announce:
            self._tell_detail(peer, CAPABILITIES_EVENT)

    def _set_peer_profile(self, peer: PeerState, profile: Profile) -> None:
        changed = peer.profile is not None and peer.profile != profile
        peer.profile = profile
        if changed:
            self._tell_detail(peer, PROFILE_EVENT)

    def _tell_detail(self, peer: PeerState, kind: str) -> None:
        """Tell a peer's new capabilities or profile (event `kind`) if its pace allows, else
        once it does: a change while that kind is held is merged into it (the one it replaces
        is counted untold), so the event log is not flooded and the latest is always told."""
        held = self._untold_details.get(peer.device_id)
        if held is None:
            self._tell_details(peer, (kind,), None)
        elif kind in held.kinds:
            self.dropped[DETAILS_UNTOLD] += 1  # an event, not a frame: the network's count
        else:
            self._untold_details[peer.device_id] = attrs.evolve(held, kinds=(*held.kinds, kind))

    def _retell_details(self, peer: PeerState) -> None:
        """Tell the detail events held of a peer, whose time has come, as its pace allows."""
        held = self._untold_details.pop(peer.device_id)
        self._tell_details(peer, held.kinds, held)

    def _tell_details(self, peer: PeerState, kinds: tuple[str, ...], held: Held | None) -> None:
        """Publish the events of `kinds`, each with the peer's current value, while its pace
        allows; hold the rest for the retell loop."""
        now = trio.current_time()
        for n, kind in enumerate(kinds):
            if (wait := peer.detail_events.delay(now)) > TOKEN_ROUNDING:
                self._hold(self._untold_details, peer.device_id, now + wait, held, kinds[n:])
                return
            peer.detail_events.spend(now)
            field = DETAIL_EVENTS[kind]
            self._publish(kind, peer, **{field: _plain(getattr(peer, field))})

    # -- sending ------------------------------------------------------------------------------

    def _local_approval(self, device_id: str) -> str:
        if self.gate is not None and self.gate.closed:
            return self.gate.approval(device_id)
        entry = self._roster.get(device_id)
        return "pending" if entry is None else entry.state

    def _hello(self, peer: PeerState, *, answer: bool) -> Hello:
        return Hello(
            major=PROTOCOL_VERSION[0],
            minor=PROTOCOL_VERSION[1],
            features=list(FEATURES),
            label=self.identity.label,
            app_version=__version__,
            role=self.role,
            capabilities=self.capabilities,
            profile=self.profile.as_shown(),
            approval=self._local_approval(peer.device_id),
            answer=answer,
        )

    async def _send(self, peer: PeerState, frame: Frame) -> None:
        """Seal and queue one frame; LinkDown when there is no link."""
        await self._send_encoded(peer, encode_frame(frame))

    async def _send_encoded(self, peer: PeerState, data: bytes) -> None:
        """Seal and queue one encoded frame; LinkDown when there is no link."""
        await self._link_queue().send(peer.public_key, peer.crypto.seal(data))

    def _link_queue(self) -> LinkOutbound:
        if self._outbound is None:
            raise LinkDown(f"network {self.network}: the broker link is {self.link_status.state}")
        return self._outbound

    async def _try_send(self, peer: PeerState, frame: Frame) -> None:
        """Send a control frame; if the link is down the next hello makes up for it."""
        try:
            await self._send(peer, frame)
        except LinkDown:
            self.dropped["link_down"] += 1

    async def _tell_handshaken(self, frame: Callable[[PeerState], Frame]) -> None:
        """Send a frame to every present, handshaken, not denied peer."""
        for peer in list(self._peers.values()):
            if _handshaken(peer) and peer.status is not PeerStatus.DENIED:
                await self._try_send(peer, frame(peer))

    # -- commands -----------------------------------------------------------------------------

    def _refuse_if_closed(self) -> None:
        """The roster ops' answer in a closed network, before they change anything: conflict."""
        if self.closed:
            raise OpError(
                ErrorCode.CONFLICT, f"{self.network} is closed: membership replaces approval"
            )

    async def _set_roster(self, device_id: str, state: str, label: str | None) -> dict[str, Any]:
        self._refuse_if_closed()
        if device_id == self.identity.device_id:
            raise OpError(ErrorCode.INVALID_PARAMS, "that is this daemon's own device id")
        if not is_usable_device_id(device_id):
            raise OpError(ErrorCode.INVALID_PARAMS, f"not a usable device id: {device_id!r}")
        peer = self._peer(device_id)
        if peer is None:
            raise self._table_full()
        await self._store_roster(device_id, state, label)
        if state == "approved":
            self._publish("peer_approved", peer)
        if peer.present and peer.hello is not None:
            await self._try_send(peer, Approval(state))
        self._update(peer)
        self._update_phase()
        return self._describe(peer)

    def _table_full(self) -> OpError:
        """Why a new device found no place: each is held by a device present at the broker or
        by an approved or denied one that is not (the others were let go to make room)."""
        said = f"peer table full ({MAX_PEERS}) in {self.network}"
        away = sum(not peer.present for peer in self._peers.values())
        if away:
            said += f": {away} held by devices not present: remove one's roster entry"
        else:
            said += ": every place is held by a device present at the broker: wait till some leave"
        return OpError(ErrorCode.UNAVAILABLE, said)

    def _roster_entry(self, device_id: str, state: str, label: str | None) -> roster_db.RosterEntry:
        """A new roster entry for `device_id`; a None label keeps the one already known."""
        previous = self._roster.get(device_id)
        kept_label = label if label is not None else previous.label if previous else None
        return roster_db.RosterEntry(
            self.network,
            device_id,
            kept_label,
            state,
            wall_ms(),
            previous.role if previous else None,
        )

    async def _store_roster(self, device_id: str, state: str, label: str | None) -> None:
        """Save an operator's roster change (with the roster changes held), then apply it."""
        entry = self._roster_entry(device_id, state, label)
        await self._save_roster([*self._unsaved.values(), entry], self._unsaved_removals)
        self._unsaved.clear()
        self._unsaved_removals = []
        self._put_entry(entry)

    async def save_unsaved(self) -> None:
        """Save the auto-approvals, roles and forgotten strangers held since the last save, in
        one transaction. They come again (auto_approve, the next hello, the next load trims
        the strangers), so a failed save is counted and logged, not fatal."""
        if not self._unsaved and not self._unsaved_removals:
            return
        entries, removals = list(self._unsaved.values()), self._unsaved_removals
        try:
            await self._save_roster(entries, removals)
        except Exception as exc:
            self.dropped["roster_unsaved"] += len(entries) + len(removals)
            log.warning("roster changes not saved", network=self.network, error=str(exc))
        # not reached when cancelled: the stopping actor saves them
        self._unsaved.clear()
        self._unsaved_removals = []

    async def _save_roster(
        self, entries: list[roster_db.RosterEntry], removals: list[roster_db.RosterEntry]
    ) -> None:
        await self.store.call(
            functools.partial(roster_db.save_roster, entries=entries, removals=removals),
            what="save roster entries",
        )

    # -- status, phase, events, views --------------------------------------------------------

    def _status_of(self, peer: PeerState) -> PeerStatus:
        local = self._local_approval(peer.device_id)
        if not peer.present:
            return PeerStatus.OFFLINE
        if peer.incompatible is not None:
            return PeerStatus.INCOMPATIBLE
        if peer.hello is None:
            return PeerStatus.SIGHTED
        if local == "denied":
            return PeerStatus.DENIED
        if local == "approved" and peer.remote_approval == "approved":
            return PeerStatus.ACTIVE
        return PeerStatus.PENDING

    def _update(self, peer: PeerState) -> None:
        """Recompute a peer's status and publish the event for a change."""
        status = self._status_of(peer)
        if status is peer.status:
            return
        peer.status = status
        if status is PeerStatus.ACTIVE:
            self._active.add(peer.device_id)
        else:
            self._active.discard(peer.device_id)
        if self._tell_status(peer):
            self.dropped["status_untold"] += 1  # an event, not a frame: the network's count
        for listener in self.status_listeners:
            listener(peer.device_id, status)

    def _tell_status(self, peer: PeerState) -> bool:
        """Publish a peer's status event if its pace allows (silent devices share one pace);
        else hand it to the retell loop, which tells the status the peer has by then. True
        when it was held back (counted untold; a status already told is not)."""
        held = self._untold.pop(peer.device_id, None)
        if peer.status is peer.told:
            return False
        pace = self._silent_events if peer.device_id in self._silent else peer.status_events
        now = trio.current_time()
        if (wait := pace.delay(now)) > TOKEN_ROUNDING:
            self._hold(self._untold, peer.device_id, now + wait, held)
            return True
        pace.spend(now)
        self._publish_status(peer)
        return False

    def _hold(
        self,
        untold: dict[str, Held],
        device_id: str,
        due: float,
        held: Held | None,
        kinds: tuple[str, ...] = (),
    ) -> None:
        """Have the retell loop tell a peer's status (`untold` is `_untold`) or its detail
        events of `kinds` (`_untold_details`) at trio time `due`, keeping the place it holds if
        its events wait already (one still waiting keeps its time too): of those due together,
        the one held longest is told first, so a shared pace reaches each in turn."""
        if held is None:
            held = Held(due, self._holds)
            self._holds += 1
        elif due <= held.due + TOKEN_ROUNDING:  # still waiting its time: in the heap already
            untold[device_id] = attrs.evolve(held, kinds=kinds)
            return
        untold[device_id] = attrs.evolve(held, due=due, kinds=kinds)
        live = functools.partial(_by_time, self._untold, self._untold_details)
        waiting = len(self._untold) + len(self._untold_details)
        self._retell_at.add(due, device_id, waiting, live)
        self._wake_retell(due)

    def _wake_retell(self, due: float) -> None:
        """Have the retell loop wake by trio time `due` (it sleeps until the earliest due)."""
        if self._retell is not None and due < self._retell.deadline:
            self._retell.deadline = due

    def _publish_status(self, peer: PeerState) -> None:
        """Publish the event of the peer's status now."""
        peer.told = peer.status
        extra: dict[str, Any] = {}
        if peer.status is PeerStatus.INCOMPATIBLE:
            extra["reason"] = peer.incompatible
        log.info(
            "peer status", network=self.network, device=peer.device_id, status=peer.status.value
        )
        self._publish(STATUS_EVENTS[peer.status], peer, **extra)

    def _update_phase(self) -> None:
        """Recompute the phase (status and networks_list show it at once) and tell a change
        as the pace allows; one not told as it happened is counted (PHASE_UNTOLD)."""
        if self._outbound is not None:
            phase = Phase.ACTIVE if self._active else Phase.ALONE
        else:
            phase = Phase.DEGRADED if self._link_was_up else Phase.CONNECTING
        if phase is not self.phase:
            self.phase = phase
            if self._phase_due < math.inf or self._tell_phase():
                self.dropped[PHASE_UNTOLD] += 1

    def _tell_phase(self) -> bool:
        """Publish the phase (`previous`: the one told last) unless it is the one told last;
        past the pace, hand it to the retell loop, which tells the phase the network has by
        then. True when it was held back."""
        self._phase_due = math.inf
        if self.phase is self._phase_told:
            return False
        now = trio.current_time()
        if (wait := self._phase_events.delay(now)) > TOKEN_ROUNDING:
            self._phase_due = now + wait
            self._wake_retell(self._phase_due)
            return True
        self._phase_events.spend(now)
        previous, self._phase_told = self._phase_told, self.phase
        self.events.publish(
            "network_phase",
            {"network": self.network, "phase": self.phase.value, "previous": previous.value},
        )
        return False

    def _publish(self, kind: str, peer: PeerState, **extra: Any) -> None:
        data = {
            "network": self.network,
            "device_id": peer.device_id,
            "label": self._label(peer),
            "status": peer.status.value,
            **extra,
        }
        self.events.publish(kind, data)

    def _label(self, peer: PeerState) -> str | None:
        entry = self._roster.get(peer.device_id)
        if entry is not None and entry.label is not None:
            return entry.label
        return peer.hello.label if peer.hello is not None else None

    def _describe(self, peer: PeerState) -> dict[str, Any]:
        hello = peer.hello
        return {
            "device_id": peer.device_id,
            "label": self._label(peer),
            "status": peer.status.value,
            "role": peer.role,
            "rtt_ms": peer.rtt_ms,
            "capabilities": _plain(peer.capabilities),
            "profile": _plain(peer.profile),
            "last_seen_ms": peer.last_seen_ms,
            "approval": self._local_approval(peer.device_id),
            "peer_approval": peer.remote_approval,
            "incompatible": peer.incompatible,
            "protocol": None if hello is None else f"{hello.major}.{hello.minor}",
            "features": None if hello is None else hello.features,
            "app_version": None if hello is None else hello.app_version,
            "frames": {**peer.crypto.stats, **peer.dropped},
            "rejected_frames": peer.rejected.total,
        }

    def _closed_out(self, peer: PeerState) -> bool:
        """A device a closed network keeps out: shown only with `all`."""
        return self.closed and self._local_approval(peer.device_id) != "approved"


def _by_time(*untold: dict[str, Held]) -> list[tuple[float, str]]:
    """The (time, device id) of the peers whose status or detail events wait."""
    return [(held.due, device_id) for each in untold for device_id, held in each.items()]


def _status_pace(burst: int) -> TokenBucket:
    """A pace of status events: `burst` at once, then one every STATUS_EVENT_INTERVAL."""
    return TokenBucket(1 / STATUS_EVENT_INTERVAL, burst)


def _features(peer: PeerState) -> list[str]:
    """The features a peer announced in its hello (none before it)."""
    return peer.hello.features if peer.hello is not None else []


def _handshaken(peer: PeerState) -> bool:
    return peer.present and peer.hello is not None


def _visible(peer: PeerState) -> bool:
    """Shown by peers_list without `all`: not a control plane, not an invisible profile."""
    if peer.role == CONTROL_PLANE_ROLE:
        return False
    return peer.profile is None or peer.profile.visible


def _plain(value: Capabilities | Profile | None) -> dict[str, Any] | None:
    return None if value is None else converter.unstructure(value)


def stored_setting(value: Any, cls: type[T]) -> T | None:
    """A setting read back from the database, or None if absent or no longer valid."""
    if value is None:
        return None
    try:
        return converter.structure(value, cls)
    except Exception:
        log.warning("ignoring an unreadable stored setting", kind=cls.__name__)
        return None
