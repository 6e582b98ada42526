"""The log's rules with real daemons and a broker: what members do when a concurrent fact
voids a grant, and what the ops answer when their own fact ends up void or not kept."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.clock import wall_ms
from meshactors.membership.facts import (
    MAX_PARENTS,
    SIG_CHARS,
    Fact,
    record_hash,
    sign,
    to_bootstrap,
)
from meshactors.membership.frames import InviteRedeem, LogFacts, LogHeads
from meshactors.membership.part import REANSWER_BACKOFF
from meshactors.wire.ipc import ErrorCode, OpError
from tests.membership.conftest import CLOSED, active, import_closed, members, team
from tests.membership.logkit import device, fact, invite, new_log
from tests.membership.test_sync import PartPair, Store
from tests.network.conftest import Daemon, Mesh


async def heads_of(daemon: Daemon) -> list[str]:
    """The heads of `daemon`'s log, asked of its network's core."""
    network = daemon.network(CLOSED)

    def heads() -> list[str]:
        assert network.membership.log is not None
        return network.membership.log.heads()

    return await network.ask("heads", heads)


async def author_unseen(daemon: Daemon, kind: str, device: str, parents: list[str]) -> Fact:
    """Have `daemon` author a fact following `parents` only, as if it had not yet seen what
    came after them (its fact crossed another in flight), keep it and push it to every peer
    it sees, as it does its own facts."""
    network = daemon.network(CLOSED)
    part = network.membership

    async def author() -> Fact:
        assert part.log is not None
        unsigned = Fact(
            CLOSED,
            part.log.genesis_hash,
            daemon.device_id,
            kind,
            device,
            "",
            wall_ms(),
            sorted(parents),
            None,
            "A" * SIG_CHARS,
        )
        made = sign(daemon.services.identity, unsigned)
        await part._save([made], background=False)
        part._take([made], stored=True)
        await part._after_change()
        for peer in network.peers.handshaken():
            await network.peers.send_control(peer, LogFacts(part.log.genesis_hash, [made]))
        return made

    return await network.ask_await("author unseen", author)


async def test_a_grant_a_concurrent_evict_voids_cuts_its_device_off_and_says_so(
    mesh: Mesh,
) -> None:
    """An admin grants X while the owner evicts that admin without having seen the grant: the
    grant is void, so every member (X too) publishes `member_revoked` for X, which leaves
    members_list, is turned away and stands alone, its role none."""
    owner, admin, other = await team(mesh, "owner", "admin", "other", roles=("admin",))
    x = await mesh.daemon("x")
    network = owner.network(CLOSED)
    await import_closed(
        x, mesh, to_bootstrap(await network.ask("genesis", network.membership.genesis))
    )
    before = await heads_of(owner)
    await admin.call("members_grant", network=CLOSED, device_id=x.device_id, role="member")
    for daemon in (owner, other):
        await active(daemon, x)
    marks = {d.name: d.last_event_id for d in (owner, other, x)}
    await author_unseen(owner, "evict", admin.device_id, before)
    for daemon in (owner, other, x):
        revoked = await daemon.wait_event(
            "member_revoked", after=marks[daemon.name], network=CLOSED, device_id=x.device_id
        )
        assert (revoked["role"], revoked["status"], revoked["granted_by"]) == (
            None,
            "revoked",
            None,
        )
        assert x.device_id not in await members(daemon)
    for daemon in (owner, other):
        await daemon.wait_event(
            "peer_denied", after=marks[daemon.name], network=CLOSED, device_id=x.device_id
        )
    await x.wait_event("network_phase", after=marks["x"], network=CLOSED, phase="alone")
    listed = (await x.call("networks_list"))["networks"][0]
    assert listed["membership"]["role"] is None and listed["phase"] == "alone"


@pytest.mark.parametrize("revoked", [False, True])
async def test_an_invite_a_concurrent_grant_used_up_is_answered_again_and_refused(
    revoked: bool,
) -> None:
    """The owner grants X with a one-use invite while an admin that has not seen that grant
    grants Y with it (Y a stranger, or a member revoked before): once the admin learns X's
    grant, Y's is void, so the admin answers Y's invite again, `the invite was used up`, and
    Y stops waiting for a grant."""
    owner, admin, x, y = device(), device(), device(), device()
    the_log = new_log(owner)
    setup = [("grant", admin, "admin"), ("grant", y, "member"), ("revoke", y, "member")]
    made = []
    for n, (kind, target, role) in enumerate(setup if revoked else setup[:1]):
        made.append(fact(the_log, owner, kind, target, role, at_ms=2000 + n))
        the_log.add(made[-1:])
    ticket = invite(the_log, owner, expires_ms=wall_ms() + 3_600_000)
    grant_x = fact(the_log, owner, "grant", x, "member", at_ms=3000, invite=ticket)
    p = PartPair.of(the_log.genesis, admin, y, made, [*made, grant_x])
    p.part(y).invite = ticket
    await p.part(y).on_handshake(admin.device_id)  # Y's heads, then its invite
    await p.run()
    assert p.wire.sent["invite_answer"] == 2  # accepted (a grant), then refused
    assert not p.log(admin).resolved.is_member(y.device_id)
    by_admin = p.part(admin).events.published  # type: ignore[attr-defined]
    about_y = [kind for kind, data in by_admin if data.get("device_id") == y.device_id]
    assert about_y == ["member_granted", "member_revoked"]
    published = p.part(y).events.published  # type: ignore[attr-defined]
    refused = [data for kind, data in published if kind == "invite_refused"]
    assert [(r["by"], r["reason"]) for r in refused] == [
        (admin.device_id, "the invite was used up")
    ]
    assert p.part(y).summary()["invite_pending"] is False


@attrs.define
class UnsavingStore:
    """Stands for a store actor that refuses every call of core's own work (a full disk:
    `storage`); counts the calls made."""

    calls: int = 0

    async def background_call(self, fn: Callable[..., Any], *, what: str) -> None:
        self.calls += 1
        raise OpError(ErrorCode.STORAGE, f"{what}: the disk is full")


async def test_an_invite_the_store_fails_to_answer_again_is_retried_and_the_core_stays_up(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Owner O holds admin A's grants of Y1..Y3 (with O's invite) when co-owner Q's revoke of
    A, made without seeing them, arrives and sorts first: the grants are void, and O would
    grant them anew, but its store answers no call. The revoke is taken and enforced all the
    same, the failures are counted, and the frame does not escape as an error that ends the
    core. The invites are kept and answered at later heads a member sends, one per heads and
    none for REANSWER_BACKOFF after the store failed one, so heads sent at will cannot hold
    the core up for a store call each kept invite."""
    owner, co_owner, admin = device(), device(), device()
    ys = [device() for _ in range(3)]
    the_log = new_log(owner)
    made = []
    for n, (target, role) in enumerate(((co_owner, "owner"), (admin, "admin"))):
        made.append(fact(the_log, owner, "grant", target, role, at_ms=2000 + n))
        the_log.add(made[-1:])
    ticket = invite(the_log, owner, expires_ms=wall_ms() + 3_600_000, uses=len(ys))
    grants = [
        fact(the_log, admin, "grant", y, "member", at_ms=3000 + n, invite=ticket)
        for n, y in enumerate(ys)
    ]
    revoke = fact(the_log, co_owner, "revoke", admin, "admin", at_ms=2900)
    p = PartPair.of(the_log.genesis, owner, co_owner, [*made, *grants], [*made, revoke])
    part = p.part(owner)
    part._rows_before = dict(p.log(owner).resolved.rows)  # as loaded: the Ys members
    part.store = failing = UnsavingStore()  # type: ignore[assignment]
    await part.on_frame(co_owner.device_id, LogFacts(the_log.genesis_hash, [revoke]))
    resolved = p.log(owner).resolved
    assert not any(resolved.is_member(y.device_id) for y in ys)
    assert part.dropped["unanswered"] == len(ys)
    assert p.wire.sent["invite_answer"] == 0  # nothing granted, so nothing told
    assert part.figures()["to_answer"] == len(ys)
    heads = LogHeads(the_log.genesis_hash, p.log(co_owner).heads())

    async def store_calls_of_heads() -> int:
        """The store calls one heads frame from Q makes."""
        before = failing.calls
        await part.on_frame(co_owner.device_id, heads)
        return failing.calls - before

    assert await store_calls_of_heads() == 0  # the store failed just now
    mock_clock.jump(REANSWER_BACKOFF)
    assert await store_calls_of_heads() == 1  # one kept invite tried, and it failed again
    assert await store_calls_of_heads() == 0  # so none until the backoff has passed
    assert part.figures()["to_answer"] == len(ys)
    # the store saves again: the heads a member sends every HEADS_INTERVAL bring the retries
    part.store = Store()  # type: ignore[assignment]
    mock_clock.jump(REANSWER_BACKOFF)
    for answered in range(1, len(ys) + 1):
        await part.on_frame(co_owner.device_id, heads)
        assert p.wire.sent["invite_answer"] == answered
    assert all(p.log(owner).resolved.role_of(y.device_id) == "member" for y in ys)
    assert part.figures()["to_answer"] == 0


async def test_an_invite_presented_while_the_store_refuses_is_kept_and_the_core_stays_up(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Y presents its invite to owner O while O's store refuses every write (a full disk, a
    lock held past the busy timeout: `storage`): the grant is not made, which is counted,
    and the frame does not escape as an error that ends the core (Y presents it again at
    each handshake). The invite is kept and granted at a later heads once the store saves."""
    owner, y = device(), device()
    the_log = new_log(owner)
    ticket = invite(the_log, owner, expires_ms=wall_ms() + 3_600_000)
    p = PartPair.of(the_log.genesis, owner, y, [], [])
    part = p.part(owner)
    part.store = UnsavingStore()  # type: ignore[assignment]
    await part.on_frame(y.device_id, InviteRedeem(ticket))
    assert part.dropped["unanswered"] == 1
    assert p.wire.sent["invite_answer"] == 0  # nothing granted, so nothing told
    assert part.figures()["to_answer"] == 1
    part.store = Store()  # type: ignore[assignment]
    mock_clock.jump(REANSWER_BACKOFF)
    await part.on_frame(y.device_id, LogHeads(the_log.genesis_hash, p.log(y).heads()))
    assert p.log(owner).resolved.role_of(y.device_id) == "member"
    assert p.wire.sent["invite_answer"] == 1
    assert part.figures()["to_answer"] == 0


async def test_an_invite_presented_again_within_the_backoff_is_kept_without_a_store_call(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Y presents its invite at each handshake; while O's store refuses, only the first
    presentation within REANSWER_BACKOFF of a failure costs a store call: the others (Y's
    again, Z's) are kept as the failed one is, and the next after the backoff is tried."""
    owner, y, z = device(), device(), device()
    the_log = new_log(owner)
    ticket = invite(the_log, owner, expires_ms=wall_ms() + 3_600_000)
    p = PartPair.of(the_log.genesis, owner, y, [], [])
    part = p.part(owner)
    part.store = failing = UnsavingStore()  # type: ignore[assignment]
    await part.on_frame(y.device_id, InviteRedeem(ticket))
    assert failing.calls == 1
    for _ in range(3):
        await part.on_frame(y.device_id, InviteRedeem(ticket))
    await part.on_frame(z.device_id, InviteRedeem(ticket))
    assert failing.calls == 1
    assert part.dropped["unanswered"] == 1
    assert part.figures()["to_answer"] == 2
    mock_clock.jump(REANSWER_BACKOFF)
    await part.on_frame(y.device_id, InviteRedeem(ticket))
    assert failing.calls == 2
    assert part.figures()["to_answer"] == 2


async def test_a_grant_taken_while_the_store_refuses_makes_a_member_and_the_core_stays_up() -> None:
    """Y holds an invite when owner O's grant of it arrives while Y's store refuses every
    write: the grant applies all the same (see `_on_facts`), and forgetting the held invite
    fails too, without escaping as an error that ends the core (a start loads no held
    invite of a member)."""
    owner, y = device(), device()
    the_log = new_log(owner)
    ticket = invite(the_log, owner, expires_ms=wall_ms() + 3_600_000)
    grant = fact(the_log, owner, "grant", y, "member", invite=ticket)
    p = PartPair.of(the_log.genesis, owner, y, [], [])
    part = p.part(y)
    part.invite = ticket
    part.store = failing = UnsavingStore()  # type: ignore[assignment]
    await part.on_frame(owner.device_id, LogFacts(the_log.genesis_hash, [grant]))
    assert failing.calls == 2  # the grant's save, then the held invite's forget
    assert p.log(y).resolved.role_of(y.device_id) == "member"
    assert part.invite is None
    assert part.summary()["invite_pending"] is False


@pytest.mark.parametrize(
    ("kind", "role"), [("grant", "member"), ("revoke", "member"), ("evict", "")]
)
async def test_a_change_whose_fact_is_void_where_it_falls_is_a_conflict(
    kind: str, role: str
) -> None:
    """An admin whose grant (from an owner whose clock runs ahead) sorts after the first
    MAX_PARENTS of its many heads: its fact names those only, falls before that grant in the
    log's order, where it may change nothing, and is void. The op says so (`conflict`), neither
    `internal` (the device has no row) nor a success showing the row as it was."""
    owner, admin, member = device(), device(), device()
    the_log = new_log(owner)
    made = [fact(the_log, owner, "grant", member, "member", at_ms=2000)]
    ahead = wall_ms() + 3_600_000
    grant = next(
        one
        for at_ms in itertools.count(ahead)
        if record_hash(one := fact(the_log, owner, "grant", admin, "admin", at_ms)) > "c"
    )
    while sum(record_hash(one) < record_hash(grant) for one in made) < MAX_PARENTS:
        made.append(fact(the_log, owner, "grant", device(), "member", at_ms=2000))
    p = PartPair.of(the_log.genesis, admin, owner, [*made, grant], [])
    part = p.part(admin)
    assert part.summary()["role"] == "admin"
    target = device().device_id if kind == "grant" else member.device_id
    with pytest.raises(OpError) as refused:
        await part.append(kind, target, role)
    assert refused.value.code == ErrorCode.CONFLICT
    assert "void" in refused.value.message
    assert p.log(admin).resolved.role_of(member.device_id) == "member"
