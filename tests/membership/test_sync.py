"""Two membership parts exchanging heads, pulls and pages frame by frame (no broker, no clock):
one exchange is enough to converge, whoever is behind and whichever frame came first, and
every exchange ends."""

from __future__ import annotations

import collections
import itertools
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshactors.identity import Identity
from meshactors.membership import log as log_module
from meshactors.membership import part as part_module
from meshactors.membership.facts import KINDS, ROLES, Fact, Genesis, record_hash
from meshactors.membership.frames import CURSOR, LOG_PAGE, MAX_HEADS, LogFacts, LogHeads
from meshactors.membership.log import MembershipLog
from meshactors.membership.part import MAX_VOID_PER_AUTHOR, Membership
from meshactors.wire.peer import FEATURES, Frame, decode_frame, encode_for
from tests.membership.logkit import device, fact, invite, new_log, seeded_device, seeded_log

MAX_FRAMES = 200  # far more than any exchange below needs: past it, the parts would loop


@attrs.define
class Wire:
    """The frames in flight between the two parts, in the order sent, as (from, to, bytes)."""

    queue: collections.deque[tuple[str, str, bytes]] = attrs.field(factory=collections.deque)
    sent: collections.Counter[str] = attrs.field(factory=collections.Counter)  # by frame tag


@attrs.define
class Table:
    """Stands for a part's peer table: the one other part is handshaken, sends go on the wire."""

    me: str
    other: str
    wire: Wire
    features: tuple[str, ...] = FEATURES  # those the other part announces

    def handshaken(self) -> list[str]:
        return [self.other]

    def announces(self, device_id: str, feature: str) -> bool:
        return feature in self.features

    async def send_control(self, device_id: str, frame: Frame) -> None:
        for data in encode_for(frame, self.features):
            self.wire.sent[decode_frame(data).tag] += 1
            self.wire.queue.append((self.me, device_id, data))

    async def reapprove(self, device_ids: list[str]) -> None:
        pass


class Store:
    """Stands for the store actor: facts are kept in memory only."""

    async def call(self, fn: Callable[..., Any], *, what: str) -> None:
        pass

    background_call = call  # core's own work's calls: kept nowhere either


@attrs.define
class Events:
    """Stands for the event hub: events are kept in a list, as (kind, data)."""

    published: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.published.append((kind, data))


@attrs.define
class PartPair:
    """An owner's and a member's parts, joined by one wire."""

    owner: Identity
    member: Identity
    parts: dict[str, Membership]
    wire: Wire

    @classmethod
    def of(
        cls,
        genesis: Genesis,
        owner: Identity,
        member: Identity,
        owners: list[Fact],
        members: list[Fact],
    ) -> PartPair:
        """Two parts of the log of `genesis`, the owner's holding `owners`, the member's
        `members` (each list parents first)."""
        p = cls(owner, member, {}, Wire())
        for who, facts in ((owner, owners), (member, members)):
            part = Membership(
                genesis.network,
                who,
                Store(),  # type: ignore[arg-type]
                Events(),  # type: ignore[arg-type]
                Table(who.device_id, p.other(who), p.wire),  # type: ignore[arg-type]
                None,  # type: ignore[arg-type]  (the link: only an evicted part parks it)
            )
            part.log = MembershipLog(genesis)
            assert len(part._take(facts, stored=True)) == len(facts)
            p.parts[who.device_id] = part
        return p

    def part(self, who: Identity) -> Membership:
        return self.parts[who.device_id]

    def log(self, who: Identity) -> MembershipLog:
        the_log = self.part(who).log
        assert the_log is not None
        return the_log

    async def send(self, sender: Identity, frame: Frame) -> None:
        """Have `sender` send `frame` to the other part (as its heads round or handshake)."""
        await self.part(sender).peers.send_control(self.other(sender), frame)

    def other(self, who: Identity) -> str:
        return self.member.device_id if who is self.owner else self.owner.device_id

    async def run(self) -> int:
        """Deliver every frame, and what it makes the parts send, until none is left; returns
        how many were delivered (the exchange must end well before MAX_FRAMES)."""
        for delivered in itertools.count():
            if not self.wire.queue:
                return delivered
            assert delivered < MAX_FRAMES, f"the exchange does not end: {self.wire.sent}"
            sender, to, data = self.wire.queue.popleft()
            await self.parts[to].on_frame(sender, decode_frame(data))
        raise AssertionError  # pragma: no cover  (itertools.count never ends)


def pair(
    shared: int, owner_only: int = 0, member_only: int = 0, *, seeded: bool = False
) -> PartPair:
    """An owner and a member of one log: `shared` grants both hold, after them `owner_only`
    grants only the owner holds and `member_only` ones only the member holds (made by the
    owner too, as if the member had them from a third member). `seeded`: the same keys and
    genesis in every run (see `seeded_devices`)."""
    make = seeded_devices() if seeded else device
    owner, member = make(), make()
    genesis = (seeded_log(owner) if seeded else new_log(owner)).genesis
    common = chain(genesis, owner, [member, *(make() for _ in range(shared))])
    only = [
        chain(genesis, owner, [make() for _ in range(n)], common[-1])
        for n in (owner_only, member_only)
    ]
    return PartPair.of(genesis, owner, member, [*common, *only[0]], [*common, *only[1]])


def seeded_devices() -> Callable[[], Identity]:
    """A maker of devices whose keys are the same in every run (seeds 1, 2, …), so that a
    generated test's example replays as it first ran."""
    seeds = itertools.count(1)
    return lambda: seeded_device(next(seeds))


def chain(
    genesis: Genesis, owner: Identity, devices: list[Identity], after: Fact | None = None
) -> list[Fact]:
    """The owner's grants of `devices`, each following the one before (the first `after`)."""
    the_log = MembershipLog(genesis)
    heads = [record_hash(after) if after is not None else the_log.genesis_hash]
    facts = []
    for n, target in enumerate(devices):
        one = fact(the_log, owner, "grant", target, "member", 2000 + n, heads)
        facts.append(one)
        heads = [record_hash(one)]
    return facts


def same_logs(p: PartPair) -> bool:
    return p.log(p.owner).facts.keys() == p.log(p.member).facts.keys()


async def send_heads(p: PartPair, sender: Identity) -> None:
    """`sender`'s heads to the other part, as after a hello or in a heads round."""
    the_log = p.log(sender)
    await p.send(sender, LogHeads(the_log.genesis_hash, the_log.heads()[:MAX_HEADS]))


async def test_a_revoked_device_is_served_up_to_its_revoke_and_then_no_more() -> None:
    owner, member = device(), device()
    the_log = new_log(owner)
    facts = []
    for kind, target, at_ms in (("grant", member, 2000), ("revoke", member, 2100)):
        facts.append(fact(the_log, owner, kind, target, "member", at_ms))
        the_log.add(facts[-1:])
    later = fact(the_log, owner, "grant", device(), "member", 2200)
    p = PartPair.of(the_log.genesis, owner, member, [*facts, later], facts[:1])
    await send_heads(p, member)
    await p.run()
    assert p.log(member).facts.keys() == {record_hash(f) for f in facts}
    assert p.part(member).summary()["role"] is None
    await send_heads(p, member)  # it holds its revoke: nothing more to serve, not answered
    assert await p.run() == 1


async def test_an_invite_refused_as_expired_is_shown_and_presented_no_more() -> None:
    owner, newcomer = device(), device()
    genesis = new_log(owner).genesis
    p = PartPair.of(genesis, owner, newcomer, [], [])
    part = p.part(newcomer)
    part.invite = invite(p.log(owner), owner, expires_ms=10_000)  # long past
    await part.on_handshake(owner.device_id)
    await p.run()
    assert part.summary()["invite_pending"] is False
    refused = part.summary()["invite_refused"]
    assert (refused["by"], refused["reason"]) == (owner.device_id, "the invite expired")
    await part.on_handshake(owner.device_id)  # the next session: not presented again
    await p.run()
    assert p.wire.sent["invite_redeem"] == 1


@pytest.mark.parametrize("flaw", ["expired", "forged"])
async def test_an_invite_presented_twice_and_refused_twice_is_published_refused_once(
    flaw: str,
) -> None:
    """Expired, it is presented no more after the first refusal; forged (refused, as for an
    evicted device, for a reason that leaves it presented), it still is, and the same answer
    again from the same owner is not published again."""
    owner, newcomer = device(), device()
    p = PartPair.of(new_log(owner).genesis, owner, newcomer, [], [])
    part = p.part(newcomer)
    part.invite = invite(p.log(owner), owner, expires_ms=10_000)  # long past
    if flaw == "forged":
        part.invite = attrs.evolve(part.invite, uses=2)  # its signature no longer verifies
    await part.on_handshake(owner.device_id)  # as at the take, and again at a handshake
    await part.on_handshake(owner.device_id)
    await p.run()
    assert p.wire.sent["invite_redeem"] == p.wire.sent["invite_answer"] == 2
    published = part.events.published  # type: ignore[attr-defined]
    assert [kind for kind, _ in published] == ["invite_refused"]
    reason = {"expired": "the invite expired", "forged": "the invite's signature does not verify"}
    assert part.summary()["invite_refused"]["reason"] == reason[flaw]


async def test_a_member_ahead_answers_older_heads_and_the_peer_behind_pulls_at_once() -> None:
    # the owner's heads to the member were lost: only the member's, older, reach the owner
    p = pair(shared=2, owner_only=3)
    await send_heads(p, p.member)
    await p.run()
    assert same_logs(p)
    assert p.wire.sent == {"log_heads": 2, "log_pull": 1, "log_facts": 1}


async def test_equal_heads_and_heads_of_a_peer_ahead_are_not_answered() -> None:
    p = pair(shared=2)
    await send_heads(p, p.member)
    assert await p.run() == 1
    p = pair(shared=2, owner_only=1)
    await send_heads(p, p.owner)
    await p.run()
    assert same_logs(p)
    assert p.wire.sent == {"log_heads": 1, "log_pull": 1, "log_facts": 1}


async def test_a_pull_naming_facts_we_lack_makes_us_pull_them_back() -> None:
    # diverged: the owner learns of the member's facts from the member's pull alone
    p = pair(shared=1, owner_only=2, member_only=3)
    await send_heads(p, p.owner)
    await p.run()
    assert same_logs(p)
    assert p.wire.sent == {"log_heads": 1, "log_pull": 2, "log_facts": 2}


async def test_a_pull_back_brings_many_pages() -> None:
    p = pair(shared=1, owner_only=2, member_only=2 * LOG_PAGE + 5)
    await send_heads(p, p.owner)
    await p.run()
    assert same_logs(p)


async def test_both_sides_sending_heads_at_once_converge_and_stop() -> None:
    p = pair(shared=1, owner_only=2 * LOG_PAGE + 5, member_only=3)
    for _ in range(2):  # each side's heads follow each hello it gets: two of each
        await send_heads(p, p.owner)
        await send_heads(p, p.member)
    await p.run()
    assert same_logs(p)


async def test_logs_apart_by_more_than_a_page_each_way_end_the_exchange() -> None:
    # each pulls the other while a page is not the last: pulling back then would never end
    p = pair(shared=1, owner_only=2 * LOG_PAGE + 5, member_only=LOG_PAGE + 1)
    for _ in range(2):
        await send_heads(p, p.owner)
        await send_heads(p, p.member)
    await p.run()


async def test_full_logs_that_differ_do_not_pull_each_other_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # neither can take the other's facts, so each would still lack what the other names
    p = pair(shared=2, owner_only=1, member_only=1)
    monkeypatch.setattr(log_module, "MAX_FACTS", len(p.log(p.owner).facts))
    monkeypatch.setattr(part_module, "MAX_FACTS", len(p.log(p.owner).facts))
    await send_heads(p, p.owner)
    await p.run()
    assert p.wire.sent == {"log_heads": 1, "log_pull": 1, "log_facts": 1}


async def test_heads_cut_off_at_the_frame_limit_are_never_answered_back_and_forth() -> None:
    # more heads than a frame names: each side may know every head the other names while
    # their logs differ. Answering each other then would never end; the exchange stops.
    owner, member = device(), device()
    genesis = new_log(owner).genesis
    granted = chain(genesis, owner, [member])
    concurrent = [chain(genesis, owner, [device()], granted[0])[0] for _ in range(MAX_HEADS + 6)]
    named = sorted(record_hash(f) for f in concurrent)
    parent = next(f for f in concurrent if record_hash(f) == named[0])  # named by the member
    # a fact after it, which only the owner holds, sorting past the cut of the owner's heads
    later = next(
        one
        for _ in range(1000)
        if record_hash(one := chain(genesis, owner, [device()], parent)[0]) > named[MAX_HEADS]
    )
    held = [*granted, *concurrent]
    p = PartPair.of(genesis, owner, member, [*held, later], held)
    assert set(p.log(member).heads()[:MAX_HEADS]) != set(p.log(owner).heads()[:MAX_HEADS])
    await send_heads(p, owner)
    await send_heads(p, member)
    await p.run()
    assert p.wire.sent == {"log_heads": 2}


@pytest.mark.parametrize(
    ("shared", "owner_only", "member_only"),
    [(LOG_PAGE + 6, 1, 1), (200, 10, 10), (200, 100, 5), (200, 5, 100), (200, 150, 5)],
)
@pytest.mark.parametrize("first", ["owner", "member"])
async def test_logs_that_diverged_after_more_than_a_page_of_shared_facts_converge(
    shared: int, owner_only: int, member_only: int, first: str
) -> None:
    # a pull naming only the puller's heads, which the server lacks, was served from the
    # start of the log: a page of facts the puller holds, so it stopped and never converged.
    # The older facts a pull names are at most a page apart: 150 facts past the divergence,
    # a pull naming facts 128 and 256 back would still be answered with shared facts only
    p = pair(shared, owner_only, member_only)
    await send_heads(p, p.owner if first == "owner" else p.member)
    await p.run()
    assert same_logs(p)


def wide(shared: int, owner_only: int) -> PartPair:
    """An owner and a member, both holding the owner's grant of the member and `shared` grants
    that each follow it alone, and the owner `owner_only` more of those: a log of as many
    heads (more than a pull can name)."""
    owner, member = device(), device()
    genesis = new_log(owner).genesis
    granted = chain(genesis, owner, [member])
    beside = [chain(genesis, owner, [device()], granted[0])[0] for _ in range(shared + owner_only)]
    return PartPair.of(genesis, owner, member, [*granted, *beside], [*granted, *beside[:shared]])


@pytest.mark.parametrize(("shared", "owner_only"), [(0, 4 * LOG_PAGE), (3 * LOG_PAGE, 5)])
async def test_a_member_catches_up_on_a_log_of_more_heads_than_a_pull_names(
    shared: int, owner_only: int
) -> None:
    # a pull names 64 of the member's heads: the server sent pages of facts it held anyway,
    # and a page with nothing new ended the exchange (a new member stopped at 130 of 3,002)
    p = wide(shared, owner_only)
    await p.send(p.member, p.part(p.member)._pull())
    await p.run()
    assert same_logs(p)


async def test_pulls_from_a_peer_without_the_cursor_still_end_on_a_page_with_nothing_new() -> None:
    p = wide(3 * LOG_PAGE, 5)
    p.part(p.member).peers.features = tuple(f for f in FEATURES if f != CURSOR)  # type: ignore[attr-defined]
    await p.send(p.member, p.part(p.member)._pull())
    await p.run()  # the same page again and again, were it pulled again: run fails then


FLOOD_TARGETS = 4  # the flooder itself, the owner and two devices the log never named

flood_plans = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.sampled_from(ROLES),
        st.integers(0, FLOOD_TARGETS - 1),
        st.lists(st.integers(0, 10**6), min_size=1, max_size=3),  # parents, among those before
    ),
    min_size=1,
    max_size=3 * MAX_VOID_PER_AUTHOR,
)


async def _flood(
    plan: list[tuple[str, str, int, list[int]]], evicted: bool, page: int, rng: random.Random
) -> None:
    """A member (or an evicted one) signs the facts of `plan` and sends them to the owner,
    shuffled, `page` to a frame: the owner keeps a few, no row changes, it evicts the member."""
    p = pair(shared=1, seeded=True)
    owner = p.part(p.owner)
    if evicted:
        await owner.append("evict", p.member.device_id, "")
    the_log = p.log(p.owner)
    rows = dict(the_log.resolved.rows)
    strangers = [seeded_device(seed).device_id for seed in (101, 102)]  # none of pair's seeds
    targets = [p.member.device_id, p.owner.device_id, *strangers]
    sent: list[str] = the_log.heads()
    flood = []
    for kind, role, target, picks in plan:
        parents = sorted({sent[pick % len(sent)] for pick in picks})
        one = fact(
            the_log, p.member, kind, targets[target], "" if kind == "evict" else role, 3000, parents
        )
        flood.append(one)
        sent.append(record_hash(one))
    rng.shuffle(flood)  # the broker may reorder: facts before their parents wait
    for start in range(0, len(flood), page):
        await owner.on_frame(
            p.member.device_id, LogFacts(the_log.genesis_hash, flood[start : start + page])
        )
    kept = [f for f in the_log.facts.values() if f.author == p.member.device_id]
    assert len(kept) <= MAX_VOID_PER_AUTHOR  # evicted or not: its author alone drops none
    assert the_log.resolved.rows == rows
    if not evicted:
        await owner.append("evict", p.member.device_id, "")
    assert the_log.resolved.evicted(p.member.device_id)


@given(plan=flood_plans, evicted=st.booleans(), page=st.integers(1, LOG_PAGE), rng=st.randoms())
@settings(max_examples=40, deadline=None)
def test_a_generated_flood_keeps_a_few_facts_changes_nothing_and_its_author_is_evicted(
    plan: list[tuple[str, str, int, list[int]]], evicted: bool, page: int, rng: random.Random
) -> None:
    trio.run(_flood, plan, evicted, page, rng)


def test_a_seeded_pair_holds_the_same_facts_in_every_run() -> None:
    """The generated flood's pair: fixed keys and genesis, so its examples replay alike."""
    first, second = pair(shared=2, seeded=True), pair(shared=2, seeded=True)
    assert first.owner.device_id == second.owner.device_id
    assert first.log(first.owner).facts.keys() == second.log(second.owner).facts.keys()
    unseeded = pair(shared=2)
    assert unseeded.log(unseeded.owner).facts.keys() != first.log(first.owner).facts.keys()


def test_a_fact_of_a_device_an_evict_without_effects_evicted_is_kept_by_every_member() -> None:
    """Co-owners P and Q; P grants X owner, Q grants Y owner; X evicts Q without seeing Y's
    grant, Y evicts P without seeing X's: each evict voids the other's author's grant, so
    both lose their effects in round 1 and stand without them, and Q's grant of Z holds. N,
    which had that grant before the evicts, and M, which gets it after them, agree on it."""
    owner, p, q, x, y, z = (device() for _ in range(6))
    the_log = new_log(owner)
    base = []
    for n, target in enumerate((p, q)):
        base.append(fact(the_log, owner, "grant", target, "owner", 2000 + n))
        the_log.add(base[-1:])
    heads = the_log.heads()
    grant_z = fact(the_log, q, "grant", z, "member", 2500, heads)
    grant_x = fact(the_log, p, "grant", x, "owner", 3000, heads)
    grant_y = fact(the_log, q, "grant", y, "owner", 3001, heads)
    evict_q = fact(the_log, x, "evict", q, "", 3100, [record_hash(grant_x)])
    evict_p = fact(the_log, y, "evict", p, "", 3101, [record_hash(grant_y)])
    later = [grant_x, grant_y, evict_q, evict_p]
    pp = PartPair.of(the_log.genesis, device(), device(), base, base)
    n_part, m_part = pp.part(pp.owner), pp.part(pp.member)
    for part, batches in ((n_part, [[grant_z], later]), (m_part, [later, [grant_z]])):
        for batch in batches:
            part._take(batch, stored=False)
    assert pp.log(pp.owner).resolved.is_member(z.device_id)
    assert pp.log(pp.owner).resolved.rows == pp.log(pp.member).resolved.rows
    assert same_logs(pp)
