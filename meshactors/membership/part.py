"""The membership part of a network's core: the one owner of a closed network's log.

It runs only in core's task (ops reach it through `Network.ask_await`, peers' frames through
core's inbox), loads and verifies the log at start, appends this device's facts, takes other
members' facts, pulls what it misses in pages, turns invites into grants and tells the peer
table who may be active (it is the table's `gate`).
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from meshactors.actors import ActorGone, Inbox
from meshactors.clock import wall_ms
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.membership import store as log_db
from meshactors.membership.facts import (
    MAX_PARENTS,
    ROLES,
    SIG_CHARS,
    BadRecord,
    Fact,
    Genesis,
    Invite,
    converter,
    nonce,
    record_hash,
    sign,
    structure,
    verify,
)
from meshactors.membership.frames import (
    CURSOR,
    LOG_PAGE,
    MAX_HEADS,
    InviteAnswer,
    InviteRedeem,
    LogFacts,
    LogHeads,
    LogPull,
    LogPullAfter,
)
from meshactors.membership.log import (
    EVICTED,
    MAX_FACTS,
    MEMBER,
    REVOKED,
    MemberRow,
    MembershipLog,
    may,
)
from meshactors.network.link import Park, UseBrokers
from meshactors.network.peers import Peers
from meshactors.store import networks as settings_db
from meshactors.store.actor import StoreActor
from meshactors.wire.device_id import SHORT_ID
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Frame

log = structlog.get_logger("meshactors.membership")

MAX_ORPHANS = 256  # facts held while their parents are fetched; more are dropped (counted)
MAX_VOID_PER_AUTHOR = 16  # void facts kept of one author that is not an owner or admin
MAX_TTL_S = 30 * 24 * 3600  # an invite's longest life
HEADS_INTERVAL = 60.0  # seconds between two sends of our heads to the members we see
MAX_UNANSWERED = 64  # invites whose answer the store failed, kept to try again
REANSWER_BACKOFF = HEADS_INTERVAL  # seconds after a failed try before a kept one is tried again
UNSIGNED = "A" * SIG_CHARS
EXPIRED, USED_UP = "the invite expired", "the invite was used up"  # reasons of invite_refused
LOG_FULL = "the membership log is full"  # and why a fact of ours is refused

RANKS = ROLES[:2]  # the roles that may change membership: their facts are never screened out
ADMIN_ROOM = 512  # the log's last places: only owners' and admins' facts (and what they follow)
OWNER_ROOM = 64  # the last of those: only owners' facts (and what they follow)
_EVENTS = {MEMBER: "member_granted", REVOKED: "member_revoked", EVICTED: "member_evicted"}


def _strength(role: str | None) -> int:
    """How strong a role is among RANKS (owner 2, admin 1), 0 for any other or none."""
    return len(RANKS) - RANKS.index(role) if role in RANKS else 0


def _room(standing: str | None) -> int:
    """How many facts the log may hold for one more of `standing` (see `Membership._screen`)
    to fit: the last ADMIN_ROOM places are kept for owners' and admins' facts, the last
    OWNER_ROOM for owners', so a flood never keeps an owner from evicting the flooder."""
    return MAX_FACTS - {"owner": 0, "admin": OWNER_ROOM}.get(standing or "", ADMIN_ROOM)


@attrs.define(eq=False)
class Membership:
    """A closed network's log and what follows from it; `log` is None in an open network."""

    network: str
    identity: Identity
    store: StoreActor
    events: EventHub
    peers: Peers
    link: Inbox[UseBrokers | Park]  # the network's link, parked once we are evicted
    log: MembershipLog | None = None
    invite: Invite | None = None  # the invite this device presents until it is a member
    refused: dict[str, object] | None = None  # the last refusal of it: by, reason, at
    orphans: dict[str, Fact] = attrs.field(factory=dict)
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)
    accepted: int = 0  # facts taken from peers since start
    unanswered: dict[str, Invite] = attrs.field(factory=dict)  # to answer again, by device
    _failed_at: float = -math.inf  # trio time the store last failed to answer one
    _rows_before: dict[str, MemberRow] = attrs.field(factory=dict)  # as last published

    @property
    def closed(self) -> bool:
        return self.log is not None

    @property
    def me(self) -> str:
        return self.identity.device_id

    def figures(self) -> dict[str, object]:
        if self.log is None:
            return {"closed": False}
        return {
            "closed": True,
            "facts": len(self.log.facts),
            "void": len(self.log.resolved.void),
            "members": sum(r.status == MEMBER for r in self.log.resolved.rows.values()),
            "orphans": len(self.orphans),
            "accepted": self.accepted,
            "to_answer": len(self.unanswered),
            "dropped": dict(self.dropped),
        }

    def summary(self) -> dict[str, Any]:
        """Our role here, and who evicted us when, as networks_list shows it."""
        if self.log is None:
            return {}
        row = self.log.resolved.rows.get(self.me)
        evicted = None
        if row is not None and row.status == EVICTED:
            reason = "this device was evicted from the closed network"
            evicted = {"by": row.granted_by, "at": row.at_ms, "reason": reason}
        return {
            "closed": True,
            "role": self.log.resolved.role_of(self.me),
            "evicted": evicted,
            "invite_pending": self.invite is not None,
            "invite_refused": self.refused,
        }

    def approval(self, device_id: str) -> str:
        assert self.log is not None
        resolved = self.log.resolved
        return (
            "approved"
            if resolved.is_member(self.me) and resolved.is_member(device_id)
            else "denied"
        )

    def approved(self) -> list[str]:
        """The devices `approval` says `approved` for: the members now, us aside, while we are
        one (`*` names them all in a closed network, offline ones too)."""
        assert self.log is not None
        resolved = self.log.resolved
        if not resolved.is_member(self.me):
            return []
        return [
            device for device in resolved.rows if device != self.me and resolved.is_member(device)
        ]

    def state_writers(self, others: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
        """The replicated state map's writer check `(sender, author) -> bool` for this network:
        `others` (the open network's check) and, in a closed network, a member as author too.
        Run in core's task, like the map."""

        def may_write(sender: str, author: str) -> bool:
            if self.log is None:
                return others(sender, author)
            return others(sender, author) and self.log.resolved.is_member(author)

        return may_write

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load and verify the stored log, then send our heads to the members we see every
        HEADS_INTERVAL (the rest of the work comes through core's inbox)."""
        await self.load()
        task_status.started()
        while True:
            await trio.sleep(HEADS_INTERVAL)
            if self.log is not None:
                heads = LogHeads(self.log.genesis_hash, self._heads())
                for peer in self.peers.handshaken():
                    if self.log.resolved.is_member(peer):
                        await self.peers.send_control(peer, heads)

    async def load(self) -> None:
        """The genesis and facts from the state database, each verified again; a record that
        fails is logged, counted (`bad_stored`) and left out. Core's start's own: its store
        calls wait for the store however long it takes."""
        genesis_json, facts_json = await self.store.background_call(
            functools.partial(log_db.load_log, network=self.network), what="load the log"
        )
        self.log, self.orphans, self.invite, self.refused = None, {}, None, None
        if genesis_json is None:
            return
        try:
            genesis = structure(genesis_json, Genesis)
            verify(genesis)
        except BadRecord as bad:
            log.error("stored genesis does not verify", network=self.network, error=str(bad))
            self.dropped["bad_stored"] += 1
            return
        self.log = MembershipLog(genesis)
        facts = []
        for data in facts_json:
            try:
                facts.append(structure(data, Fact))
            except BadRecord:
                self.dropped["bad_stored"] += 1
        self._take(facts, stored=True)
        flood = _flooded(self.log)
        if flood:
            self.log.remove(flood)
            self.dropped["stored_flood"] += len(flood)
            await self._prune(flood)
        self._rows_before = dict(self.log.resolved.rows)
        if self.log.resolved.evicted(self.me):
            await self.link.send(Park())
        settings = await self.store.background_call(
            functools.partial(settings_db.get_settings, network=self.network),
            what="load the held invite",
        )
        held = settings.get(log_db.INVITE_KEY)
        if held is not None and not self.log.resolved.is_member(self.me):
            try:
                self.invite = structure(held, Invite)
            except BadRecord:
                self.dropped["bad_stored"] += 1

    # -- ops --------------------------------------------------------------------------------

    def _closed_log(self) -> MembershipLog:
        if self.log is None:
            raise OpError(ErrorCode.CONFLICT, f"{self.network} is not a closed network")
        return self.log

    def members(self) -> list[dict[str, object]]:
        """members_list: every device the log names, by device id."""
        rows = self._closed_log().resolved.rows
        return [rows[d].view() for d in sorted(rows)]

    def genesis(self) -> Genesis:
        return self._closed_log().genesis

    def undeliverable(self) -> frozenset[str] | None:
        """Whom this network's durable messages can never reach: the devices evicted from it,
        or everyone (None) once this device is evicted itself; nobody in an open network."""
        if self.log is None:
            return frozenset()
        if self.log.resolved.evicted(self.me):
            return None
        rows = self.log.resolved.rows.values()
        return frozenset(row.device for row in rows if row.status == EVICTED)

    async def append(self, kind: str, device: str, role: str) -> dict[str, object]:
        """members_grant, _revoke, _evict: sign a fact following our heads, keep it, apply it
        and send it to every handshaken peer (OpError forbidden when our role does not allow
        it, conflict when the fact is void where it falls in the log's order)."""
        the_log = self._closed_log()
        resolved = the_log.resolved
        if not may(resolved.role_of(self.me), kind, role, resolved.role_of(device)):
            raise OpError(
                ErrorCode.FORBIDDEN,
                f"a {resolved.role_of(self.me) or 'non-member'} may not {kind} "
                f"{role or 'a device'} here",
            )
        if resolved.evicted(device):
            raise OpError(ErrorCode.CONFLICT, f"{device} was evicted from {self.network}")
        if kind == "revoke" and resolved.role_of(device) != role:
            raise OpError(ErrorCode.CONFLICT, self._not_held(device, role))
        digest = record_hash(await self._author(kind, device, role, None, background=False))
        if digest in the_log.resolved.void:  # it names at most MAX_PARENTS of our heads
            raise OpError(
                ErrorCode.CONFLICT,
                f"the {kind} was kept but is void: where it falls in the log's order (after "
                "the heads it names) the rules do not allow it; members_list shows where "
                "each device stands",
            )
        return {"fact": digest, "member": the_log.resolved.rows[device].view()}

    def _not_held(self, device: str, role: str) -> str:
        """Why a revoke of `role` is a conflict, with the role `device` holds: a revoke without
        --role means member, which an admin does not hold, and saying only that left users stuck."""
        held = self._closed_log().resolved.role_of(device)
        if held is None:
            return f"{device[:SHORT_ID]} holds no role in {self.network}: nothing to revoke"
        return f"{device[:SHORT_ID]} holds {held}, not {role}: use --role {held}"

    async def _author(
        self, kind: str, device: str, role: str, invite: Invite | None, *, background: bool
    ) -> Fact:
        """Sign, keep, apply and send a fact of ours; OpError conflict, and nothing kept, when
        the log has no room for it. `background` (`_save`) for a grant of an invite."""
        the_log = self._closed_log()
        if self._no_room():
            raise OpError(ErrorCode.CONFLICT, f"{LOG_FULL} ({len(the_log.facts)} facts)")
        parents = the_log.heads()[:MAX_PARENTS]
        at = max([wall_ms(), *(the_log.facts[p].at_ms + 1 for p in parents if p in the_log.facts)])
        unsigned = Fact(
            self.network,
            the_log.genesis_hash,
            self.me,
            kind,
            device,
            role,
            at,
            sorted(parents),
            invite,
            UNSIGNED,
        )
        fact = sign(self.identity, unsigned)
        await self._save([fact], background=background)
        self._take([fact], stored=True)
        await self._after_change()
        for peer in self.peers.handshaken():
            await self.peers.send_control(peer, LogFacts(the_log.genesis_hash, [fact]))
        return fact

    async def take_invite(self, invite: Invite) -> None:
        """network_join_invite: keep the invite and present it to every peer we see now, then
        at each handshake until we are a member (OpError conflict when this device is a
        member or was evicted: nobody would grant it)."""
        resolved = self._closed_log().resolved
        if resolved.evicted(self.me):
            raise OpError(ErrorCode.CONFLICT, f"this device was evicted from {self.network}")
        role = resolved.role_of(self.me)
        if role is not None:
            raise OpError(
                ErrorCode.CONFLICT,
                f"this device is a member of {self.network} already (role {role}); "
                "an owner or admin changes its role with members grant",
            )
        await self.store.call(
            functools.partial(
                log_db.hold_invite, network=self.network, invite=converter.unstructure(invite)
            ),
            what="hold the invite",
        )
        self.invite, self.refused = invite, None
        for peer in self.peers.handshaken():
            await self.peers.send_control(peer, InviteRedeem(invite))

    def make_invite(self, role: str, ttl_s: float, uses: int) -> Invite:
        """members_invite: a signed invite of `role` for `uses` devices, for `ttl_s` seconds."""
        the_log = self._closed_log()
        if not may(the_log.resolved.role_of(self.me), "grant", role, None):
            raise OpError(ErrorCode.FORBIDDEN, f"this device may not grant {role} here")
        expires = wall_ms() + int(ttl_s * 1000)
        unsigned = Invite(
            self.network, the_log.genesis_hash, self.me, role, expires, uses, nonce(), UNSIGNED
        )
        return sign(self.identity, unsigned)

    # -- peers' frames ----------------------------------------------------------------------

    async def on_handshake(self, device_id: str) -> None:
        if self.log is None:
            return
        await self.peers.send_control(device_id, LogHeads(self.log.genesis_hash, self._heads()))
        if self.invite is not None:
            await self.peers.send_control(device_id, InviteRedeem(self.invite))

    async def on_frame(self, device_id: str, frame: Frame) -> None:
        """Handle one membership frame from a handshaken peer; bad ones are counted."""
        if self.log is None:
            self.dropped["not_closed"] += 1
            return
        match frame:
            case LogHeads(genesis=genesis, heads=heads) if self._ours(genesis):
                await self._on_heads(device_id, heads)
            case LogPull(genesis=genesis, heads=named) if self._ours(genesis):
                await self._on_pull(device_id, named, None)
            case LogPullAfter(genesis=genesis, heads=named, after=after) if self._ours(genesis):
                await self._on_pull(device_id, named, after)
            case LogFacts(genesis=genesis, facts=facts, more=more) if self._ours(genesis):
                await self._on_facts(device_id, facts, more)
            case InviteRedeem(invite=invite):
                await self._on_presented(device_id, invite)
            case InviteAnswer(accepted=False, reason=reason):
                self._refused(device_id, reason)
            case InviteAnswer():
                pass
            case _:
                self.dropped["wrong_network"] += 1

    def _refused(self, device_id: str, reason: str) -> None:
        """Publish a refusal and keep it, while we present an invite, for networks_list; an
        invite refused as expired or used up is presented no more until the next start (the
        refusal is only the peer's word: a start tries it again). Any refusal is published
        once: the same answer again from the same device (the invite went out at the take and
        at each handshake, to every owner and admin) is not news."""
        if self.invite is None:
            return
        told = self.refused or {}
        if (told.get("by"), told.get("reason")) == (device_id, reason):
            return
        self.events.publish(
            "invite_refused", {"network": self.network, "by": device_id, "reason": reason}
        )
        self.refused = {"by": device_id, "reason": reason, "at": wall_ms()}
        if reason in (EXPIRED, USED_UP):
            self.invite = None

    def _ours(self, genesis: str) -> bool:
        return self.log is not None and genesis == self.log.genesis_hash

    def _heads(self) -> list[str]:
        assert self.log is not None
        return self.log.heads()[:MAX_HEADS]

    def _pull(self, after: str | None = None) -> LogPull | LogPullAfter:
        """A pull naming our heads and older facts we hold (see MembershipLog.landmarks), of
        the facts after `after` in the server's order if given."""
        assert self.log is not None
        named = self.log.landmarks(MAX_HEADS, LOG_PAGE)
        if after is None:
            return LogPull(self.log.genesis_hash, named)
        return LogPullAfter(self.log.genesis_hash, named, after)

    def _knows_all(self, digests: list[str]) -> bool:
        assert self.log is not None
        return all(self.log.knows(d) for d in digests)

    def _served(self, device_id: str, heads: list[str]) -> bool:
        """Whether a peer holding `heads` lacks facts we would serve it (see `_serve`): a
        member, or a revoked or evicted device that lacks the fact that ended its membership
        (answering one that holds it would bring an empty page, at each exchange of heads)."""
        assert self.log is not None
        row = self.log.resolved.rows.get(device_id)
        if row is None:
            return False
        return row.status == MEMBER or row.fact not in self.log.ancestors(heads)

    async def _on_heads(self, device_id: str, heads: list[str]) -> None:
        """Pull when a peer's heads name facts we lack; when we hold all of them and more,
        answer with our heads, so a peer behind us pulls now and not at its next exchange of
        heads (60 s away, if ours to it was lost). Their heads then name all their log (fewer
        than MAX_HEADS, none cut off), so we are strictly ahead: our heads name a fact they
        lack, or are cut off themselves, and in both cases they do not answer back. First,
        answer again one invite the store failed to (see `_answer_unanswered`): members send
        heads every HEADS_INTERVAL, so they are tried again with no other change."""
        assert self.log is not None
        await self._answer_unanswered()
        ours = self._heads()
        if not self._knows_all(heads):
            await self.peers.send_control(device_id, self._pull())
        elif len(heads) < MAX_HEADS and set(heads) != set(ours) and self._served(device_id, heads):
            await self.peers.send_control(device_id, LogHeads(self.log.genesis_hash, ours))

    async def _on_pull(self, device_id: str, named: list[str], after: str | None) -> None:
        """Serve a pull; when it names facts we lack, pull them back at once (not at the next
        exchange of heads), but only once our page is the last the puller needs and while our
        log can take more: the puller then holds all we name when our pull reaches it (it
        takes what we served first, frames keep order), so it never pulls back in turn."""
        assert self.log is not None
        if (
            await self._serve(device_id, named, after)
            and not self._knows_all(named)
            and len(self.log.facts) < MAX_FACTS
        ):
            await self.peers.send_control(device_id, self._pull())

    async def _serve(self, device_id: str, named: list[str], after: str | None) -> bool:
        """Send a page of what the puller lacks (it holds what it named and all they follow),
        after `after` in our order if given: all of it to a member; to a revoked or evicted
        device only up to the fact that ended its membership, so that it learns where it
        stands (a revoked admin stops acting as one) and nothing after. Whether that (or
        nothing) was all it lacks."""
        assert self.log is not None
        row = self.log.resolved.rows.get(device_id)
        if row is None:
            self.dropped["pull_refused"] += 1
            return False
        upto = None if row.status == MEMBER else row.fact
        page = self.log.missing_for(named, LOG_PAGE + 1, upto, after)
        more = len(page) > LOG_PAGE
        if page:
            frame = LogFacts(self.log.genesis_hash, page[:LOG_PAGE], more)
            await self.peers.send_control(device_id, frame)
        return not more

    async def _on_facts(self, device_id: str, facts: list[Fact], more: bool) -> None:
        assert self.log is not None
        waiting = set(self.orphans)
        taken = self._take(facts, stored=False)
        if taken:
            try:
                await self._save(taken, background=True)
            except Exception as exc:  # they apply now; a member sends them again after a restart
                self.dropped["unsaved"] += len(taken)
                log.warning("facts not saved", network=self.network, error=str(exc))
            self.accepted += len(taken)
            await self._after_change()
            if any(fact.author != device_id for fact in taken):  # relayed: others may lack it
                heads = LogHeads(self.log.genesis_hash, self._heads())
                for peer in self.peers.handshaken():
                    if peer != device_id:
                        await self.peers.send_control(peer, heads)
        # the next page, after this one's end (a peer that serves pages so moves on through
        # its log, whatever this one brought); else a gap, or the next page from an older
        # peer, only after progress (a fact taken, or one that waits now): a peer behind us
        # answers with what we have, and pulling again would never end
        if more and facts and self.peers.announces(device_id, CURSOR):
            await self.peers.send_control(device_id, self._pull(record_hash(facts[-1])))
        elif (taken or self.orphans.keys() - waiting) and (self.orphans or more):
            await self.peers.send_control(device_id, self._pull())

    def _take(self, facts: list[Fact], *, stored: bool) -> list[Fact]:
        """Check facts and add those whose parents are here; what still lacks a parent waits
        as an orphan (at most MAX_ORPHANS: the limit is on what waits, not on the batch, so a
        stored log of any length loads whole). Returns what was added, parents first."""
        assert self.log is not None
        batch: dict[str, Fact] = {}
        for fact in facts:
            try:
                digest = self.log.check(fact)
            except BadRecord as bad:
                self.dropped["bad_stored" if stored else bad.reason] += 1
                continue
            if digest in self.orphans or digest in batch:
                self.dropped["duplicate"] += 1
                continue
            batch[digest] = fact
        waiting = {**self.orphans, **batch}
        standing = None if stored else self._screen(waiting)
        added = self._place(waiting, standing)
        self.orphans = {d: f for d, f in waiting.items() if d in self.orphans}
        for digest, fact in waiting.items():
            if digest in self.orphans:
                continue
            if len(self.orphans) >= MAX_ORPHANS:
                self.dropped["orphans_full"] += 1
                continue
            self.orphans[digest] = fact
        if added:
            self.log.add(added)
        return added

    def _screen(self, waiting: dict[str, Fact]) -> dict[str, str | None]:
        """Drop from `waiting` (counted) facts that may change nothing and would only fill
        the log: past MAX_VOID_PER_AUTHOR void facts of an author that is not an owner or
        admin (`author_quota`), an evicted one too (whether an evict holds, and so which of
        its device's facts are void, may change as more facts arrive: a fact dropped for its
        author alone could be one others keep as valid). Never a fact that an owner's or
        admin's fact here follows: every member needs it to place that one. Returns the
        standing of each fact left, by hash: the role (owner, admin) of the strongest author
        of it or of a fact here that follows it, else None; its room in the log (`_room`)."""
        assert self.log is not None
        resolved = self.log.resolved
        ranked = {d: resolved.role_of(d) for d in resolved.rows if resolved.role_of(d) in RANKS}
        grown = True
        while grown:  # and the devices an owner's grant here makes owners or admins
            grown = False
            for fact in waiting.values():
                if fact.kind != "grant" or ranked.get(fact.author) != "owner":
                    continue
                if _strength(fact.role) > _strength(ranked.get(fact.device)):
                    ranked[fact.device] = fact.role
                    grown = True
        standing = {digest: ranked.get(fact.author) for digest, fact in waiting.items()}
        stack = [digest for digest, rank in standing.items() if rank is not None]
        while stack:  # what an owner's or admin's fact follows stands as that fact
            digest = stack.pop()
            for parent in waiting[digest].parents:
                if parent in waiting and _strength(standing[digest]) > _strength(standing[parent]):
                    standing[parent] = standing[digest]
                    stack.append(parent)
        void = collections.Counter(self.log.facts[d].author for d in resolved.void)
        for digest, fact in list(waiting.items()):
            if standing[digest] is not None:
                continue
            if void[fact.author] < MAX_VOID_PER_AUTHOR:
                void[fact.author] += 1  # it may be void: counted as such until it is resolved
                continue
            del waiting[digest]
            del standing[digest]
            self.dropped["author_quota"] += 1
        return standing

    def _place(
        self, waiting: dict[str, Fact], standing: dict[str, str | None] | None
    ) -> list[Fact]:
        """Take out of `waiting` every fact whose parents are in the log or placed before it,
        parents first; returns those of a granted author (the others are junk, counted) that
        have room in the log for their `standing` (see `_screen`; None: stored facts, taken
        once already, have the room any fact has)."""
        assert self.log is not None
        added: list[Fact] = []
        placed: set[str] = set()
        granted = set(self.log.granted)  # the log's, and this batch's grants so far
        progress = True
        while progress:
            progress = False
            for digest, fact in list(waiting.items()):
                if not placed.issuperset(self.log.missing(fact)):
                    continue
                del waiting[digest]
                progress = True
                if fact.author not in granted:  # never granted anything: junk, not kept
                    self.dropped["not_a_member" if standing is not None else "bad_stored"] += 1
                    continue
                held = len(self.log.facts) + len(added)
                if standing is not None and held >= _room(standing[digest]):
                    self.dropped["log_full"] += 1
                    continue
                placed.add(digest)
                added.append(fact)
                if fact.kind == "grant":
                    granted.add(fact.device)
        return added

    async def _after_change(self) -> None:
        """Publish what changed since the last resolve and enforce it on the peer table, then
        answer again the invites whose grants turned void (see `_answer_again`)."""
        for row in await self._enforce_change():
            await self._answer_again(row)

    async def _enforce_change(self) -> list[MemberRow | None]:
        """Publish what changed since the last resolve and enforce it on the peer table; the
        rows the changed devices had before. A device whose row is gone (a concurrent evict of
        its grant's author voided the grant) is a member no more, like a revoked one:
        `member_revoked`, with no author or time."""
        assert self.log is not None
        rows = self.log.resolved.rows
        before, self._rows_before = self._rows_before, dict(rows)
        changed = [d for d, row in rows.items() if before.get(d) != row]
        changed += [d for d in before if d not in rows]
        for device in changed:
            row = rows.get(device)
            status = REVOKED if row is None else row.status
            view = _gone(device) if row is None else row.view()
            self.events.publish(_EVENTS[status], {"network": self.network, **view})
            if row is not None and device == self.me and row.status == EVICTED:
                log.warning("this device was evicted", network=self.network, by=row.granted_by)
                self.events.publish("evicted", {"network": self.network, **row.view()})
        earlier = [before.get(device) for device in changed]
        if self.me not in changed:
            await self.peers.reapprove(changed)
            return earlier
        if self.log.resolved.is_member(self.me) and (self.invite, self.refused) != (None, None):
            self.invite, self.refused = None, None
            await self._forget_invite()
        await self.peers.reapprove(self.peers.handshaken())  # our own standing changed
        if self.log.resolved.evicted(self.me):
            await self.link.send(Park())
        return earlier

    async def _answer_again(self, row: MemberRow | None) -> None:
        """A device's grant turned void (`row`, what it set, is gone or replaced): if it
        redeemed an invite and the device is no member now, answer that invite again, so the
        device does not wait for an answer for ever: `the invite was used up` when another
        device took a one-use invite at the same time, a new grant while the invite holds."""
        assert self.log is not None
        resolved = self.log.resolved
        if row is None or row.fact not in resolved.void or row.device == self.me:
            return
        invite = self.log.facts[row.fact].invite
        if invite is None or resolved.is_member(row.device):
            return
        await self._answer_invite(row.device, invite)

    async def _on_presented(self, device_id: str, invite: Invite) -> None:
        """Answer an invite a device presents, or, for REANSWER_BACKOFF after the store failed
        one, only keep it (see `_answer_unanswered`): a device presents it at each handshake,
        and while the store refuses each answer would cost core's task a store call."""
        if self._pausing():
            self._keep(device_id, invite)
        else:
            await self._answer_invite(device_id, invite)

    async def _answer_invite(self, device_id: str, invite: Invite) -> None:
        """Answer a device's invite: one it presents, or one again whose grant turned void. A
        grant the store fails to save is not made (counted as `unanswered`; a change that led
        here stands and is enforced all the same, and the core stays up): the invite is kept
        (up to MAX_UNANSWERED) to try again at a later heads a member sends us (a device that
        was a member presents it no more; one that presents it does so again only at its next
        handshake)."""
        self.unanswered.pop(device_id, None)
        try:
            await self._redeem(device_id, invite)
        except (ActorGone, OpError) as exc:
            self.dropped["unanswered"] += 1
            self._failed_at = trio.current_time()
            log.warning("invite not answered", network=self.network, error=str(exc))
            self._keep(device_id, invite)

    def _keep(self, device_id: str, invite: Invite) -> None:
        """Keep a device's invite to answer at a later heads (its last one, in its place if
        kept already); past MAX_UNANSWERED kept, a new device's is not kept."""
        if device_id in self.unanswered or len(self.unanswered) < MAX_UNANSWERED:
            self.unanswered[device_id] = invite

    def _pausing(self) -> bool:
        """Whether no kept or presented invite is tried now: the store failed one less than
        REANSWER_BACKOFF ago."""
        return trio.current_time() < self._failed_at + REANSWER_BACKOFF

    async def _answer_unanswered(self) -> None:
        """Try again one invite kept by `_answer_invite` (the longest kept), of a device that is no
        member yet, and none for REANSWER_BACKOFF after the store failed one: heads come from
        any peer at will, and each try may wait a whole store call out in core's task."""
        assert self.log is not None
        for device_id in [d for d in self.unanswered if self.log.resolved.is_member(d)]:
            del self.unanswered[device_id]
        if self.unanswered and not self._pausing():
            await self._answer_invite(*next(iter(self.unanswered.items())))

    async def _redeem(self, device_id: str, invite: Invite) -> None:
        """Turn a presented invite into a grant, once, if we may; answer why not otherwise."""
        assert self.log is not None
        resolved = self.log.resolved
        if not may(resolved.role_of(self.me), "grant", invite.role, None):
            return  # another owner or admin may
        reason = self._invite_refusal(invite)
        if reason is None and resolved.evicted(device_id):
            reason = "this device was evicted"
        if reason is None and not resolved.is_member(device_id) and self._no_room():
            reason = LOG_FULL
        if reason is not None:
            self.dropped["invite_refused"] += 1
            await self.peers.send_control(device_id, InviteAnswer(False, reason))
            return
        if not resolved.is_member(device_id):
            await self._author("grant", device_id, invite.role, invite, background=True)
        await self.peers.send_control(device_id, InviteAnswer(True, ""))

    def _no_room(self) -> bool:
        """Whether the log has no room for one more fact of ours (see `_room`)."""
        assert self.log is not None
        return len(self.log.facts) >= _room(self.log.resolved.role_of(self.me))

    def _invite_refusal(self, invite: Invite) -> str | None:
        assert self.log is not None
        try:
            verify(invite)
        except BadRecord:
            return "the invite's signature does not verify"
        if invite.network != self.network or invite.genesis != self.log.genesis_hash:
            return "the invite is for another network"
        if wall_ms() > invite.expires_ms:
            return EXPIRED
        if not may(self.log.resolved.role_of(invite.issuer), "grant", invite.role, None):
            return "the invite's issuer may no longer grant that role"
        digest = record_hash(invite)
        used = {
            f.device
            for h, f in self.log.facts.items()
            if f.invite is not None
            and record_hash(f.invite) == digest
            and h not in self.log.resolved.void
        }
        if len(used) >= invite.uses:
            return USED_UP
        return None

    async def _save(self, facts: list[Fact], *, background: bool) -> None:
        """Store facts: with `background` (a peer's facts, a grant of an invite: only core's
        own work waits) for however long the store takes (`StoreActor.background_call`), else
        (an op's fact: a client waits) under the store's deadline."""
        call = self.store.background_call if background else self.store.call
        await call(
            functools.partial(log_db.save_facts, network=self.network, facts=facts),
            what="save facts",
        )

    async def _prune(self, flood: set[str]) -> None:
        """Delete the stored facts the load screened out (see `_flooded`); when the store
        fails, they stay there and the next start screens them out again."""
        try:
            await self.store.background_call(
                functools.partial(log_db.drop_facts, network=self.network, digests=flood),
                what="drop a stored flood",
            )
        except (ActorGone, OpError) as exc:
            log.warning("stored flood not dropped", network=self.network, error=str(exc))

    async def _forget_invite(self) -> None:
        """Forget the held invite once we are a member: core's own work, which waits for the
        store however long it takes (`StoreActor.background_call`). When the store fails, the
        invite stays stored, which is harmless: a start loads no held invite of a member."""
        try:
            await self.store.background_call(
                functools.partial(log_db.forget_invite, network=self.network),
                what="forget the held invite",
            )
        except (ActorGone, OpError) as exc:
            log.warning("held invite not forgotten", network=self.network, error=str(exc))


def _flooded(the_log: MembershipLog) -> set[str]:
    """The facts of a loaded log (taken before the quotas, or kept by a daemon without them)
    that `Membership._screen` and the rooms would have kept out, by the log's order so that
    members holding the same facts drop the same: of each device that is never an owner or
    admin (`MembershipLog.ranked`: its facts are all void, so dropping them changes nothing
    else), the facts past the first MAX_VOID_PER_AUTHOR, then, from the last, those past
    ADMIN_ROOM's start; never one that a ranked device's fact follows, nor a grant of the
    author of one (it would be junk at the next load), and always what follows a dropped
    fact or whose author's every grant is dropped."""
    facts, order = the_log.facts, the_log.order()
    ranked = the_log.ranked()
    grants: dict[str, list[str]] = {}
    for digest, fact in facts.items():
        if fact.kind == "grant":
            grants.setdefault(fact.device, []).append(digest)
    needed: set[str] = set()
    stack = [digest for digest, fact in facts.items() if fact.author in ranked]
    while stack:
        digest = stack.pop()
        if digest not in needed:
            needed.add(digest)
            stack += [p for p in facts[digest].parents if p in facts]
            stack += grants.get(facts[digest].author, [])
    void = collections.Counter(facts[d].author for d in needed if facts[d].author not in ranked)
    kept = set(needed)

    def follows_kept(digest: str) -> bool:
        return all(p in kept for p in facts[digest].parents if p in facts)

    for digest in order:  # parents first
        author = facts[digest].author
        if digest not in needed and void[author] < MAX_VOID_PER_AUTHOR and follows_kept(digest):
            void[author] += 1
            kept.add(digest)
    for digest in reversed(order):  # what follows a fact is after it in the order
        if len(kept) <= _room(None):
            break
        if digest not in needed:
            kept.discard(digest)
    while True:
        grants_kept = (facts[d].device for d in kept if facts[d].kind == "grant")
        granted = {the_log.genesis.owner, *grants_kept}
        held = len(kept)
        for digest in order:
            left = digest in kept and digest not in needed
            if left and (facts[digest].author not in granted or not follows_kept(digest)):
                kept.discard(digest)
        if len(kept) == held:
            return set(facts) - kept


def _gone(device: str) -> dict[str, object]:
    """The row events show of a device the log names no more (its grant turned void)."""
    return {"device_id": device, "role": None, "granted_by": None, "at": None, "status": REVOKED}
