"""A member, or an evicted device, that signs void facts by the thousand (a modified daemon)
cannot fill a closed network's log: the owner keeps a few and can still evict it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from meshactors.clock import wall_ms
from meshactors.identity import Identity
from meshactors.membership import log as membership_log
from meshactors.membership import part as membership_part
from meshactors.membership.facts import MAX_PARENTS, Fact, record_hash
from meshactors.membership.log import MAX_FACTS, MembershipLog
from meshactors.membership.store import save_facts
from meshactors.network.link import Park, UseBrokers
from tests.membership.conftest import CLOSED, figures, granted, members, push, team
from tests.membership.logkit import device
from tests.membership.logkit import fact as logkit_fact
from tests.network.conftest import Daemon, Mesh, OpFailed


def self_promotions(author: Daemon, count: int, parents: list[str] | None = None) -> list[Fact]:
    """`count` grants of admin by `author` to itself, signed by its key, each following the
    one before (the first `parents`, else its log's heads): all void, as a member's are."""
    the_log = author.network(CLOSED).membership.log
    assert the_log is not None
    return promotions(the_log, author.services.identity, count, parents or the_log.heads())


def promotions(
    the_log: MembershipLog, author: Identity, count: int, heads: list[str]
) -> list[Fact]:
    """`count` grants of admin by `author` to itself in `the_log`'s network, each following
    the one before, the first `heads`."""
    facts = []
    for n in range(count):
        one = logkit_fact(
            the_log, author, "grant", author, "admin", wall_ms() + n, heads, network=CLOSED
        )
        facts.append(one)
        heads = [record_hash(one)]
    return facts


async def handled(sender: Daemon, receiver: Daemon, owner: Daemon) -> None:
    """Wait until `receiver` has handled every fact `sender` pushed to it so far: a grant by
    `owner` pushed after them (frames keep their order) applies."""
    the_log = receiver.network(CLOSED).membership.log
    assert the_log is not None
    newcomer = device()
    after = the_log.heads()[:MAX_PARENTS]
    await push(sender, receiver, [granted(owner, the_log, newcomer, after)])
    await receiver.wait_event("member_granted", device_id=newcomer.device_id)


class StaysOnTheBroker:
    """Stands for a network's link in a modified daemon that does not leave when evicted."""

    async def send(self, _message: UseBrokers | Park) -> None:
        pass


async def test_a_member_flooding_the_log_is_held_to_a_few_and_the_owner_evicts_it(
    mesh: Mesh,
) -> None:
    owner, flooder = await team(mesh, "owner", "flooder")
    before = (await figures(owner))["facts"]
    flood = self_promotions(flooder, MAX_FACTS + 4)
    await push(flooder, owner, flood)
    await handled(flooder, owner, owner)
    shown = await figures(owner)
    kept = membership_part.MAX_VOID_PER_AUTHOR
    assert shown["facts"] == before + kept + 1
    assert shown["dropped"]["author_quota"] == len(flood) - kept
    await owner.call("members_evict", network=CLOSED, device_id=flooder.device_id)
    assert (await members(owner))[flooder.device_id] == (None, "evicted")


async def test_an_evicted_device_that_stays_adds_no_more_than_its_quota(mesh: Mesh) -> None:
    owner, flooder = await team(mesh, "owner", "flooder")
    flooder.network(CLOSED).membership.link = StaysOnTheBroker()  # type: ignore[assignment]
    await owner.call("members_evict", network=CLOSED, device_id=flooder.device_id)
    await flooder.wait_event("evicted", network=CLOSED)
    before = await figures(owner)
    kept = membership_part.MAX_VOID_PER_AUTHOR
    flood = self_promotions(flooder, kept + 3)
    await push(flooder, owner, flood)
    await handled(flooder, owner, owner)
    after = await figures(owner)
    assert after["facts"] == before["facts"] + kept + 1
    assert after["dropped"]["author_quota"] == 3


async def test_void_facts_an_admin_followed_reach_a_member_that_had_others_of_their_author(
    mesh: Mesh,
) -> None:
    # each kept a different few of the flood; the admin's grant follows its own few, which
    # the owner's quota would turn away: it takes them, as it needs them to place the grant
    owner, admin, flooder = await team(mesh, "owner", "admin", "flooder", roles=("admin",))
    kept = membership_part.MAX_VOID_PER_AUTHOR
    heads = owner.network(CLOSED).membership.log.heads()  # type: ignore[union-attr]
    await push(flooder, owner, self_promotions(flooder, kept + 1, heads))
    await push(flooder, admin, self_promotions(flooder, kept + 1, heads))
    await handled(flooder, owner, owner)
    await handled(flooder, admin, owner)
    newcomer = device()
    await admin.call("members_grant", network=CLOSED, device_id=newcomer.device_id, role="member")
    await owner.wait_event("member_granted", device_id=newcomer.device_id)
    assert await members(owner) == await members(admin)


async def test_members_flooding_together_leave_the_owner_room_to_evict(mesh: Mesh) -> None:
    # many members, each within its quota: their void facts stop where the room kept for
    # owners and admins starts, while the owner's grants (pushed among them) still fit
    owner, flooder = await team(mesh, "owner", "flooder")
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    quota = membership_part.MAX_VOID_PER_AUTHOR
    flood: list[Fact] = []
    heads = the_log.heads()
    for _ in range(MAX_FACTS // (quota + 1) + 1):
        member = device()
        grant = granted(owner, the_log, member, heads)
        heads = [record_hash(grant)]
        flood += [grant, *promotions(the_log, member, quota, heads)]
    await push(flooder, owner, flood)
    await handled(flooder, owner, owner)
    assert (await figures(owner))["dropped"]["log_full"] > 0
    await owner.call("members_evict", network=CLOSED, device_id=flooder.device_id)
    assert (await members(owner))[flooder.device_id] == (None, "evicted")


def _rows(home: Path) -> int:
    """The membership_log rows of CLOSED in a daemon's state database (run in a thread)."""
    db = sqlite3.connect(home / "state.db")
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM membership_log WHERE network = ?", (CLOSED,)
        ).fetchone()
    finally:
        db.close()
    return int(count)


async def test_a_full_log_refuses_our_grant_and_an_invite_and_keeps_no_row(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, member = await team(mesh, "owner", "member")
    token = (await owner.call("members_invite", network=CLOSED, role="member"))["token"]
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    for module in (membership_part, membership_log):
        monkeypatch.setattr(module, "MAX_FACTS", len(the_log.facts))
    rows = await trio.to_thread.run_sync(_rows, owner.home)
    with pytest.raises(OpFailed) as refused:
        await owner.call("members_evict", network=CLOSED, device_id=member.device_id)
    assert refused.value.code == "conflict"
    newcomer = await mesh.daemon("newcomer")
    await newcomer.call("network_join_invite", token=token)
    answer = await newcomer.wait_event("invite_refused", network=CLOSED)
    assert (answer["by"], answer["reason"]) == (owner.device_id, membership_part.LOG_FULL)
    assert await trio.to_thread.run_sync(_rows, owner.home) == rows
    assert (await members(owner))[member.device_id] == ("member", "member")


def _store_flood(home: Path, facts: list[Fact]) -> None:
    """Append `facts` to CLOSED's log in a stopped daemon's state database, as a daemon from
    before the quotas kept them (run in a thread)."""
    db = sqlite3.connect(home / "state.db")
    try:
        save_facts(db, CLOSED, facts)
    finally:
        db.close()


async def test_a_flood_stored_before_the_quotas_is_screened_at_start_and_room_made(
    mesh: Mesh,
) -> None:
    owner, flooder = await team(mesh, "owner", "flooder")
    before = (await figures(owner))["facts"]
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    flood = promotions(the_log, flooder.services.identity, MAX_FACTS - before, the_log.heads())
    await flooder.stop()
    await owner.stop()
    await trio.to_thread.run_sync(_store_flood, owner.home, flood)
    rows = await trio.to_thread.run_sync(_rows, owner.home)
    owner = await mesh.daemon("owner")
    kept = membership_part.MAX_VOID_PER_AUTHOR
    shown = await figures(owner)
    assert shown["facts"] == before + kept
    assert shown["dropped"] == {"stored_flood": len(flood) - kept}
    assert await trio.to_thread.run_sync(_rows, owner.home) == rows - (len(flood) - kept)
    newcomer = device()
    await owner.call("members_grant", network=CLOSED, device_id=newcomer.device_id, role="member")
    assert (await members(owner))[newcomer.device_id] == ("member", "member")
