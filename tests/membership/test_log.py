"""The membership log's rules: signatures, links, order and conflicts, with real keys."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import unittest.mock
from typing import Any

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshactors.identity import Identity
from meshactors.membership import part as membership_part
from meshactors.membership.facts import (
    BOOTSTRAP_PREFIX,
    MAX_BOOTSTRAP_CHARS,
    MAX_TOKEN_CHARS,
    TOKEN_PREFIX,
    BadRecord,
    Fact,
    Genesis,
    converter,
    from_bootstrap,
    from_token,
    record_hash,
    structure,
    to_bootstrap,
    verify,
)
from meshactors.membership.frames import MEMBERSHIP_FRAMES
from meshactors.membership.log import MembershipLog
from meshactors.wire.peer import BadPeerFrame, decode_frame
from tests.membership.logkit import (
    accept,
    device,
    fact,
    forged,
    invite,
    new_log,
    seeded_device,
    seeded_log,
)


def test_owner_grants_admin_who_grants_member_and_a_member_grants_nothing() -> None:
    owner, admin, member, other = device(), device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", admin, "admin"))
    accept(log, fact(log, admin, "grant", member, "member", at_ms=3000))
    by_member = fact(log, member, "grant", other, "member", at_ms=4000)
    accept(log, by_member)
    assert log.resolved.role_of(admin.device_id) == "admin"
    assert log.resolved.role_of(member.device_id) == "member"
    assert not log.resolved.is_member(other.device_id)
    assert record_hash(by_member) in log.resolved.void


def test_an_admin_cannot_make_an_admin_nor_evict_an_owner() -> None:
    owner, admin, other = device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", admin, "admin"))
    accept(log, fact(log, admin, "grant", other, "admin", at_ms=3000))
    accept(log, fact(log, admin, "evict", owner, at_ms=4000))
    assert not log.resolved.is_member(other.device_id)
    assert log.resolved.role_of(owner.device_id) == "owner"


def test_a_forged_signature_a_replay_and_another_network_are_refused() -> None:
    owner, member = device(), device()
    log = new_log(owner)
    grant = fact(log, owner, "grant", member, "member")
    with pytest.raises(BadRecord) as bad:
        log.check(forged(grant))
    assert bad.value.reason == "bad_signature"
    accept(log, grant)
    with pytest.raises(BadRecord) as replay:
        log.check(grant)
    assert replay.value.reason == "duplicate"
    other = new_log(owner)
    with pytest.raises(BadRecord) as foreign:
        other.check(fact(log, owner, "grant", device(), "member"))
    assert foreign.value.reason == "wrong_network"


def test_a_forged_genesis_is_refused() -> None:
    owner, thief = device(), device()
    genesis = new_log(owner).genesis
    assert from_bootstrap(to_bootstrap(genesis)) == genesis
    claimed = attrs.evolve(genesis, owner=thief.device_id)  # the thief's id, owner's signature
    with pytest.raises(BadRecord) as bad:
        from_bootstrap(to_bootstrap(claimed))
    assert bad.value.reason == "bad_signature"


def test_a_fact_before_its_parent_waits_for_it() -> None:
    owner, a, b = device(), device(), device()
    log = new_log(owner)
    first = fact(log, owner, "grant", a, "member")
    second = fact(log, owner, "grant", b, "member", parents=[record_hash(first)], at_ms=3000)
    log.check(second)
    assert log.missing(second) == [record_hash(first)]
    accept(log, first, second)
    assert log.order() == [record_hash(first), record_hash(second)]
    assert log.heads() == [record_hash(second)]


def test_evict_beats_a_concurrent_grant_in_every_arrival_order() -> None:
    owner, admin1, admin2, target = device(), device(), device(), device()
    base = new_log(owner)
    setup = [
        fact(base, owner, "grant", admin1, "admin", at_ms=1100),
    ]
    accept(base, *setup)
    setup.append(fact(base, owner, "grant", admin2, "admin", at_ms=1200))
    accept(base, setup[-1])
    evict = fact(base, admin1, "evict", target, at_ms=5000)
    grant_late = fact(base, admin2, "grant", target, "member", at_ms=6000)
    grant_early = fact(base, admin2, "grant", target, "member", at_ms=4000)
    results = set()
    for concurrent in itertools.permutations([evict, grant_late, grant_early]):
        log = MembershipLog(base.genesis)
        accept(log, *setup, *concurrent)
        results.add(tuple(sorted((d, r.status) for d, r in log.resolved.rows.items())))
        assert log.resolved.evicted(target.device_id)
    assert len(results) == 1


def test_a_revoked_admin_is_void_from_the_revocation_on() -> None:
    owner, admin, early, late = device(), device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", admin, "admin", at_ms=1100))
    heads = log.heads()
    revoke = fact(log, owner, "revoke", admin, "admin", at_ms=5000)
    before = fact(log, admin, "grant", early, "member", at_ms=4000, parents=heads)
    after = fact(log, admin, "grant", late, "member", at_ms=6000, parents=heads)
    accept(log, revoke, before, after)
    assert log.resolved.is_member(early.device_id)
    assert not log.resolved.is_member(late.device_id)
    assert not log.resolved.is_member(admin.device_id)


def test_an_evicted_device_cannot_act_before_its_eviction_by_backdating() -> None:
    owner, stolen, victim = device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", stolen, "admin", at_ms=1100))
    accept(log, fact(log, owner, "grant", victim, "member", at_ms=1200))
    heads = log.heads()
    evict = fact(log, owner, "evict", stolen, at_ms=5000)
    backdated = fact(log, stolen, "evict", victim, at_ms=1300, parents=heads)
    accept(log, evict, backdated)
    assert log.resolved.is_member(victim.device_id)
    assert record_hash(backdated) in log.resolved.void


def test_what_an_evicted_owner_did_before_the_evict_saw_it_holds() -> None:
    owner, co_owner, early, late = device(), device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", co_owner, "owner", at_ms=1100))
    heads = log.heads()
    accept(log, fact(log, owner, "grant", early, "member", at_ms=1200))
    evict = fact(log, co_owner, "evict", owner, at_ms=5000)
    unseen = fact(log, owner, "grant", late, "member", at_ms=1300, parents=heads)
    accept(log, evict, unseen)
    assert log.resolved.is_member(early.device_id)
    assert not log.resolved.is_member(late.device_id)
    assert record_hash(unseen) in log.resolved.void


def test_an_evicted_admin_s_members_stay_but_its_unseen_grant_is_void() -> None:
    """An evict voids the grants of its device that its author had not seen, not those it had:
    the admin it evicts keeps what it did before (the members it granted stay members)."""
    owner, admin, early, late = device(), device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", admin, "admin", at_ms=1100))
    accept(log, fact(log, admin, "grant", early, "member", at_ms=1200))
    heads = log.heads()
    evict = fact(log, owner, "evict", admin, at_ms=5000)
    regrant = fact(log, owner, "grant", admin, "admin", at_ms=1300, parents=heads)
    unseen = fact(log, admin, "grant", late, "member", at_ms=1400, parents=heads)
    accept(log, evict, regrant, unseen)
    assert log.resolved.is_member(early.device_id)
    assert log.resolved.evicted(admin.device_id)
    assert not log.resolved.is_member(late.device_id)
    assert {record_hash(regrant), record_hash(unseen)} <= log.resolved.void


def _deliver(log: MembershipLog, facts: list[Fact]) -> MembershipLog:
    """Add `facts` in the order given, each as soon as its parents are here (as a member's
    orphans wait for theirs)."""
    waiting = list(facts)
    while waiting:
        ready = [one for one in waiting if not log.missing(one)]
        assert ready, "a fact names a parent no fact is"
        for one in ready:
            accept(log, one)
            waiting.remove(one)
    return log


def _regrant_holds(log: MembershipLog, author: Identity, target: str) -> bool:
    """Whether a grant of `target` by `author`, after every fact of the log, would hold."""
    copy = _deliver(MembershipLog(log.genesis), list(log.facts.values()))
    late = max((one.at_ms for one in log.facts.values()), default=0) + 1
    regrant = fact(copy, author, "grant", target, "member", at_ms=late)
    accept(copy, regrant)
    return record_hash(regrant) not in copy.resolved.void


@pytest.mark.parametrize("owner_at", [3050, 3200])
def test_an_evict_its_authors_grant_turns_void_bans_nobody(owner_at: int) -> None:
    """A co-owner makes C admin and C evicts M, while the owner evicts the co-owner without
    having seen that grant: C's grant is void, so C's evict is void and bans nobody. M stays a
    member (and the owner may grant it again), before or after C's evict in the order and in
    every arrival order."""
    o1, o2, c, m = device(), device(), device(), device()
    base = new_log(o1)
    setup = [fact(base, o1, "grant", o2, "owner", at_ms=2000)]
    accept(base, *setup)
    setup.append(fact(base, o1, "grant", m, "member", at_ms=2100))
    accept(base, setup[-1])
    heads = base.heads()
    grant_c = fact(base, o2, "grant", c, "admin", at_ms=3000, parents=heads)
    evict_m = fact(base, c, "evict", m, at_ms=3100, parents=[record_hash(grant_c)])
    evict_o2 = fact(base, o1, "evict", o2, at_ms=owner_at, parents=heads)
    first = None
    for concurrent in itertools.permutations([grant_c, evict_m, evict_o2]):
        log = _deliver(MembershipLog(base.genesis), [*setup, *concurrent])
        assert log.resolved.evicted(o2.device_id)
        assert not log.resolved.is_member(c.device_id)
        assert log.resolved.role_of(m.device_id) == "member"
        assert {record_hash(grant_c), record_hash(evict_m)} <= log.resolved.void
        assert log.resolved == (first := first or log.resolved)
    assert _regrant_holds(log, o1, m.device_id)


# The generated logs' devices and genesis are the same in every run: the log resolves by its
# facts' hashes, so with fresh keys or a fresh nonce a replayed example could resolve otherwise.
_OWNER = seeded_device(1)
_CAST = [seeded_device(seed) for seed in range(2, 6)]  # with _OWNER, the generated logs' devices
_ROLES = ("owner", "admin", "member")

_STEP = st.tuples(
    st.integers(0, len(_CAST)),  # author: 0 is the genesis owner, then _CAST
    st.sampled_from(["grant", "grant", "revoke", "evict"]),
    st.integers(0, len(_CAST)),  # target, as the author
    st.sampled_from(_ROLES),
    st.integers(2000, 2010),  # at_ms: close together, so authors backdate and tie
    st.lists(st.integers(0, 63), min_size=1, max_size=3),  # parents: among the facts so far
)


def _generated(
    steps: list[tuple[int, str, int, str, int, list[int]]],
) -> tuple[Genesis, list[Fact]]:
    """A genesis and its log's facts: the owner grants _CAST owner, admin, admin, member in one
    line, then `steps`, each following one to three facts made before it (so many are
    concurrent; a step made twice is one fact)."""
    cast = [_OWNER, *_CAST]
    log = seeded_log(_OWNER)
    made: list[Fact] = []
    for n, role in enumerate(("owner", "admin", "admin", "member")):
        made.append(fact(log, _OWNER, "grant", _CAST[n], role, at_ms=1100 + n))
        accept(log, made[-1])
    for author, kind, target, role, at_ms, picks in steps:
        parents = sorted({record_hash(made[p % len(made)]) for p in picks})
        one = fact(
            log, cast[author], kind, cast[target], "" if kind == "evict" else role, at_ms, parents
        )
        if one not in made:
            made.append(one)
    return log.genesis, made


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, max_size=8), data=st.data())
def test_every_arrival_order_of_any_log_resolves_alike_and_only_a_holding_evict_bans(
    steps: list[tuple[int, str, int, str, int, list[int]]], data: st.DataObject
) -> None:
    """Grants, revokes and evicts by a few authors, many concurrent, delivered to three
    members in random orders: all resolve the same roles and void facts; and a device is
    evicted exactly when a grant of it by an owner, after all of it, would be void (an evict
    that turns out void bans nobody)."""
    genesis, facts = _generated(steps)
    replicas = [
        _deliver(MembershipLog(genesis), data.draw(st.permutations(facts))) for _ in range(3)
    ]
    assert replicas[0].resolved == replicas[1].resolved == replicas[2].resolved
    log = replicas[0]
    cast = [_OWNER, *_CAST]
    owner = next((who for who in cast if log.resolved.role_of(who.device_id) == "owner"), None)
    for target in cast if owner is not None else []:
        evicted = log.resolved.evicted(target.device_id)
        assert _regrant_holds(log, owner, target.device_id) is not evicted


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, max_size=8), data=st.data())
def test_skipping_only_facts_a_plain_replay_voids_resolves_the_same(
    steps: list[tuple[int, str, int, str, int, list[int]]], data: st.DataObject
) -> None:
    """On any generated log, a replay that skips some of the facts the plain replay voids
    resolves as the plain one does: what lets a resolve whose evicts void nothing new stop
    after one replay."""
    genesis, facts = _generated(steps)
    log = _deliver(MembershipLog(genesis), facts)
    plain = log._replay(frozenset())
    skipped = data.draw(st.sets(st.sampled_from(sorted(plain.void)))) if plain.void else set()
    assert log._replay(frozenset(skipped)) == plain


@settings(max_examples=20, deadline=None)
@given(steps=st.lists(_STEP, max_size=8))
def test_a_generated_log_is_the_same_in_every_run_of_its_steps(
    steps: list[tuple[int, str, int, str, int, list[int]]],
) -> None:
    """Its steps alone fix a generated log and how it resolves, so that hypothesis, replaying
    an example to shrink it or a failure's printed one, runs what it first ran."""
    first, again = (
        _deliver(MembershipLog(g), f) for g, f in (_generated(steps), _generated(steps))
    )
    assert first.facts == again.facts
    assert first.resolved == again.resolved


def test_a_batch_replays_the_log_once_when_its_evicts_void_nothing_new() -> None:
    """An evict of a member whose concurrent fact is void anyway (a member grants nothing):
    a one-fact batch after it resolves with one replay of the log, not two."""
    owner, m, x, y = device(), device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", m, "member", at_ms=1100))
    heads = log.heads()
    futile = fact(log, m, "grant", x, "member", at_ms=1200, parents=heads)
    accept(log, futile, fact(log, owner, "evict", m, at_ms=1300, parents=heads))
    assert log.resolved.evicted(m.device_id)
    assert record_hash(futile) in log.resolved.void
    replay = MembershipLog._replay
    with unittest.mock.patch.object(
        MembershipLog, "_replay", autospec=True, side_effect=replay
    ) as counted:
        log.add([fact(log, owner, "grant", y, "member", at_ms=1400)])
    assert counted.call_count == 1
    assert log.resolved.role_of(y.device_id) == "member"


_FLOODERS = [
    seeded_device(seed) for seed in (6, 7)
]  # a member of the generated logs and whom it grants

_FLOOD_STEP = st.tuples(
    st.integers(0, len(_FLOODERS)),  # author: 0 is the genesis owner, then _FLOODERS
    st.sampled_from(["grant", "revoke", "evict"]),
    st.integers(0, len(_CAST) + len(_FLOODERS)),  # target: _OWNER, _CAST, then _FLOODERS
    st.sampled_from(_ROLES),
    st.integers(2000, 2010),
    st.lists(st.integers(0, 127), min_size=1, max_size=3),  # parents: among the facts so far
)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(_STEP, max_size=6), flood=st.lists(_FLOOD_STEP, max_size=24))
def test_a_stored_flood_screened_out_at_load_changes_no_role_and_nothing_else_void(
    steps: list[tuple[int, str, int, str, int, list[int]]],
    flood: list[tuple[int, str, int, str, int, list[int]]],
) -> None:
    """A generated log, then a member's facts (and those of a device it grants, and the
    owner's among and after them), past a quota of 2: what the load's screen drops leaves
    every device's row, and every other fact void or not, as they were."""
    genesis, facts = _generated(steps)
    log = _deliver(MembershipLog(genesis), facts)
    facts.append(fact(log, _OWNER, "grant", _FLOODERS[0], "member", at_ms=2000))
    cast = [_OWNER, *_CAST, *_FLOODERS]
    authors = [_OWNER, *_FLOODERS]
    for author, kind, target, role, at_ms, picks in flood:
        parents = sorted({record_hash(facts[p % len(facts)]) for p in picks})
        role = "" if kind == "evict" else role
        one = fact(log, authors[author], kind, cast[target], role, at_ms, parents)
        if one not in facts:
            facts.append(one)
    log = _deliver(MembershipLog(genesis), facts)
    before = log.resolved
    with unittest.mock.patch.object(membership_part, "MAX_VOID_PER_AUTHOR", 2):
        dropped = membership_part._flooded(log)
    assert all(log.facts[d].author in {f.device_id for f in _FLOODERS} for d in dropped)
    log.remove(dropped)
    assert log.resolved.rows == before.rows
    assert log.resolved.void == before.void - dropped
    assert all(not log.missing(one) for one in log.facts.values())


def test_an_invite_admits_as_many_devices_as_its_uses_and_not_after_its_time() -> None:
    owner, admin, a, b, c = device(), device(), device(), device(), device()
    log = new_log(owner)
    accept(log, fact(log, owner, "grant", admin, "admin", at_ms=1100))
    ticket = invite(log, owner, expires_ms=10_000, uses=1)
    accept(log, fact(log, admin, "grant", a, "member", at_ms=2000, invite=ticket))
    accept(log, fact(log, admin, "grant", a, "member", at_ms=2100, invite=ticket))  # same device
    accept(log, fact(log, owner, "grant", b, "member", at_ms=2200, invite=ticket))
    late = invite(log, owner, expires_ms=3000, uses=5)
    accept(log, fact(log, admin, "grant", c, "member", at_ms=3001, invite=late))
    assert log.resolved.is_member(a.device_id)
    assert not log.resolved.is_member(b.device_id)
    assert not log.resolved.is_member(c.device_id)


def test_missing_for_gives_what_a_peer_lacks_parents_first_in_pages() -> None:
    owner = device()
    log = new_log(owner)
    for n in range(10):
        accept(log, fact(log, owner, "grant", device(), "member", at_ms=2000 + n))
    start = [log.genesis_hash]
    assert [record_hash(f) for f in log.missing_for(start, 4)] == log.order()[:4]
    behind = MembershipLog(log.genesis)
    while page := log.missing_for(behind.heads(), 4):
        accept(behind, *page)
    assert behind.resolved == log.resolved


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    data=JSON,
    field=st.sampled_from(
        [
            "network",
            "genesis",
            "author",
            "kind",
            "device",
            "role",
            "at_ms",
            "parents",
            "invite",
            "sig",
            None,
        ]
    ),
)
def test_any_input_is_a_fact_that_verifies_or_a_bad_record(data: Any, field: str | None) -> None:
    """Untrusted JSON, alone or in place of one field of a real fact, decodes to a fact that
    verifies or raises BadRecord: never another exception."""
    owner = _OWNER
    log = _LOG
    good = converter.unstructure(fact(log, owner, "grant", owner, "member"))
    candidate = data if field is None else {**good, field: data}
    try:
        decoded = structure(candidate, Fact)
        log.check(decoded)
    except BadRecord:
        return
    verify(decoded)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300))
def test_any_bootstrap_text_is_a_genesis_or_a_bad_record(text: str) -> None:
    try:
        genesis = from_bootstrap("mshg1." + text)
    except BadRecord:
        return
    assert isinstance(genesis, Genesis)


def _fitting(prefix: str, limit: int, nested: str) -> str:
    """`prefix` and base64url of as much of `nested` as fits in `limit` characters."""
    encoded = base64.urlsafe_b64encode(nested.encode()).decode().rstrip("=")
    return prefix + encoded[: (limit - len(prefix)) // 4 * 4]


@settings(max_examples=100, deadline=None)
@given(
    depth=st.integers(1, MAX_TOKEN_CHARS),
    opener=st.sampled_from(["[", '{"a":']),
    closed=st.booleans(),
)
@example(depth=MAX_TOKEN_CHARS, opener="[", closed=False)
def test_a_bootstrap_or_token_nested_any_depth_is_a_bad_record(
    depth: int, opener: str, closed: bool
) -> None:
    """JSON nested deeper than the parser goes, within the length caps, is malformed like any
    other bad JSON (the ops answer `invalid_params`), never an error the caller cannot name."""
    nested = opener * depth + ("]" if opener == "[" else "}") * (depth if closed else 0)
    with pytest.raises(BadRecord):
        from_bootstrap(_fitting(BOOTSTRAP_PREFIX, MAX_BOOTSTRAP_CHARS, nested))
    with pytest.raises(BadRecord):
        from_token(_fitting(TOKEN_PREFIX, MAX_TOKEN_CHARS, nested))


_LOG = new_log(_OWNER)


MEMBERSHIP_TAGS = [frame.tag for frame in MEMBERSHIP_FRAMES]


@settings(max_examples=300, deadline=None)
@given(
    tag=st.sampled_from(MEMBERSHIP_TAGS),
    fields=st.dictionaries(
        st.sampled_from(["genesis", "heads", "facts", "more", "invite", "accepted", "reason", "x"]),
        JSON,
        max_size=4,
    ),
)
def test_any_membership_frame_decodes_or_is_a_bad_peer_frame(
    tag: str, fields: dict[str, Any]
) -> None:
    """A peer's membership frame is decoded strictly (BadPeerFrame otherwise), and every fact
    in a decoded page then checks out or is a BadRecord."""
    try:
        frame = decode_frame(json.dumps({"t": tag, **fields}).encode())
    except BadPeerFrame:
        return
    for fact_ in getattr(frame, "facts", []):
        with contextlib.suppress(BadRecord):
            _LOG.check(fact_)
