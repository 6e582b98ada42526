"""The membership log survives restarts (verified on load) and reaches late and returning
members in pages, whatever order its facts arrive in."""

from __future__ import annotations

import functools
import math
import sqlite3
from pathlib import Path

import pytest
import trio

from meshactors.membership import part as membership_part
from meshactors.membership.facts import Fact, record_hash, to_bootstrap
from meshactors.membership.frames import LOG_PAGE, LogHeads
from tests.membership.conftest import (
    CLOSED,
    active,
    figures,
    granted,
    import_closed,
    members,
    push,
    team,
)
from tests.membership.logkit import device
from tests.network.conftest import Daemon, Mesh


def _tamper(home: Path) -> None:
    """Change the stored fact's `at_ms` so its signature no longer verifies (its `hash`
    column stays, as a disk fault or an edit would leave it). Run in a thread: the other
    daemons share this event loop, which a blocking SQLite call would stall."""
    db = sqlite3.connect(home / "state.db")
    with db:
        db.execute(
            "UPDATE membership_log SET record_json = replace(record_json, '\"at_ms\":', "
            "'\"at_ms\":1') WHERE kind = 'fact'"
        )
    db.close()


async def test_the_log_survives_a_restart_and_a_tampered_record_is_left_out(mesh: Mesh) -> None:
    owner, member = await team(mesh, "owner", "member")
    await member.stop()  # no peer can hand the owner back what it leaves out
    before = await members(owner)
    await owner.stop()
    owner = await mesh.daemon("owner")
    assert await members(owner) == before
    await owner.stop()
    await trio.to_thread.run_sync(_tamper, owner.home)
    owner = await mesh.daemon("owner")
    assert member.device_id not in await members(owner)
    assert (await figures(owner))["dropped"] == {"bad_stored": 1}


async def test_a_member_that_is_up_restores_a_left_out_fact_and_it_is_kept(mesh: Mesh) -> None:
    owner, member = await team(mesh, "owner", "member")
    mark = owner.last_event_id  # the restarted daemon's stream replays what came before
    await owner.stop()
    await trio.to_thread.run_sync(_tamper, owner.home)
    owner = await mesh.daemon("owner")
    await owner.wait_event("member_granted", after=mark, device_id=member.device_id)
    assert (await members(owner))[member.device_id] == ("member", "member")
    assert (await figures(owner))["dropped"]["bad_stored"] == 1
    await member.stop()
    await owner.stop()
    owner = await mesh.daemon("owner")
    assert (await members(owner))[member.device_id] == ("member", "member")
    assert "bad_stored" not in (await figures(owner))["dropped"]


async def test_a_log_longer_than_the_orphan_limit_is_loaded_whole(mesh: Mesh) -> None:
    (owner,) = await team(mesh, "owner")
    for _ in range(membership_part.MAX_ORPHANS + 8):
        await owner.call(
            "members_grant", network=CLOSED, device_id=device().device_id, role="member"
        )
    before = await members(owner)
    await owner.stop()
    owner = await mesh.daemon("owner")
    assert await members(owner) == before
    assert (await figures(owner))["dropped"] == {}


async def test_a_fact_before_its_parent_waits_and_both_apply_once_it_comes(mesh: Mesh) -> None:
    owner, member = await team(mesh, "owner", "member")
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    x, y = device(), device()

    first = granted(owner, the_log, x, the_log.heads())
    second = granted(owner, the_log, y, [record_hash(first)])
    mark = member.last_event_id
    await push(owner, member, [second])
    await push(owner, member, [first])
    await member.wait_event("member_granted", after=mark, device_id=y.device_id)
    assert {x.device_id, y.device_id} <= set(await members(member))
    assert (await figures(member))["orphans"] == 0


async def test_a_page_that_brings_nothing_new_ends_the_pulls_while_a_fact_waits(
    mesh: Mesh,
) -> None:
    owner, member = await team(mesh, "owner", "member")
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    x, w, y, z, v = (device() for _ in range(5))

    # the member's; the owner does not keep it (yet)
    ahead = granted(owner, the_log, x, the_log.heads())
    further = granted(owner, the_log, w, [record_hash(ahead)])
    gap = granted(owner, the_log, z, [record_hash(further)])  # nobody has it yet
    waiting = granted(owner, the_log, y, [record_hash(gap)])
    await push(owner, member, [ahead])
    await member.wait_event("member_granted", device_id=x.device_id)
    before = (await figures(member))["dropped"].get("duplicate", 0)  # the setup's catch-up
    # the member takes one, keeps one waiting and pulls: the owner, behind it, can only answer
    # with what the member has. Each step below is a round trip on the same two paths, so
    # whatever the member pulled before it has been answered and handled after it.
    await push(owner, member, [further, waiting])
    await member.wait_event("member_granted", device_id=w.device_id)
    await push(member, owner, [ahead])
    await owner.wait_event("member_granted", device_id=x.device_id)
    await push(owner, member, [gap])
    await member.wait_event("member_granted", device_id=y.device_id)
    await push(member, owner, [further])
    await owner.wait_event("member_granted", device_id=w.device_id)
    await push(owner, member, [granted(owner, the_log, v, [record_hash(waiting)])])
    await member.wait_event("member_granted", device_id=v.device_id)
    assert (await figures(member))["dropped"] == {"duplicate": before + 1}


async def test_a_late_member_receives_the_whole_log_in_pages(mesh: Mesh) -> None:
    (owner,) = await team(mesh, "owner")
    for _ in range(2 * LOG_PAGE + 5):
        await owner.call(
            "members_grant", network=CLOSED, device_id=device().device_id, role="member"
        )
    late = await mesh.daemon("late")
    genesis = owner.network(CLOSED).membership.log.genesis  # type: ignore[union-attr]
    await import_closed(late, mesh, to_bootstrap(genesis))
    await owner.call("members_grant", network=CLOSED, device_id=late.device_id, role="member")
    await late.wait_event("member_granted", device_id=late.device_id)
    await active(owner, late)
    assert await members(late) == await members(owner)
    assert (await figures(late))["accepted"] == 2 * LOG_PAGE + 6


async def test_a_late_member_receives_a_log_of_more_heads_than_a_pull_names(mesh: Mesh) -> None:
    # it named 64 of its heads, was sent pages of facts it held, and stopped at the first
    (owner,) = await team(mesh, "owner")
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    heads = the_log.heads()
    beside = [granted(owner, the_log, device(), heads) for _ in range(4 * LOG_PAGE)]
    await _keep(owner, *beside)
    late = await mesh.daemon("late")
    await import_closed(late, mesh, to_bootstrap(the_log.genesis))
    await owner.call("members_grant", network=CLOSED, device_id=late.device_id, role="member")
    for one in beside:
        await late.wait_event("member_granted", device_id=one.device)
    assert await members(late) == await members(owner)


async def test_a_push_the_broker_dropped_is_fetched_at_the_next_heads(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership_part, "HEADS_INTERVAL", 0.05)
    owner, member = await team(mesh, "owner", "member")
    network = owner.network(CLOSED)
    part = network.membership
    assert part.log is not None
    x = device()
    fact = granted(owner, part.log, x, part.log.heads())

    async def keep_without_sending() -> None:  # as if the broker dropped the owner's push
        part._take([fact], stored=True)

    await network.ask_await("keep a fact", keep_without_sending)
    await member.wait_event("member_granted", device_id=x.device_id)


async def _send_heads(sender: Daemon, to: Daemon) -> None:
    """`sender`'s heads to `to`, as after a hello or in a heads round."""
    network = sender.network(CLOSED)
    part = network.membership
    assert part.log is not None
    frame = LogHeads(part.log.genesis_hash, part.log.heads())
    await network.ask_await(
        "send heads", functools.partial(network.peers.send_control, to.device_id, frame)
    )


async def _keep(daemon: Daemon, *facts: Fact) -> None:
    """Have `daemon` take `facts` without sending them (as if the broker dropped its push)."""
    part = daemon.network(CLOSED).membership

    async def keep() -> None:
        assert part._take(list(facts), stored=True) == list(facts)

    await daemon.network(CLOSED).ask_await("keep a fact", keep)


async def test_a_member_ahead_answers_older_heads_and_the_one_behind_pulls_at_once(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership_part, "HEADS_INTERVAL", math.inf)  # no heads round helps
    owner, member = await team(mesh, "owner", "member")
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    x = device()
    await _keep(owner, granted(owner, the_log, x, the_log.heads()))
    # the owner's heads to the member were lost (its fact too): only the member's reach it
    await _send_heads(member, owner)
    await member.wait_event("member_granted", device_id=x.device_id)


async def test_a_pull_naming_facts_we_lack_makes_us_pull_them_back(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership_part, "HEADS_INTERVAL", math.inf)
    owner, member = await team(mesh, "owner", "member")
    the_log = owner.network(CLOSED).membership.log
    assert the_log is not None
    x, y = device(), device()
    heads = the_log.heads()
    await _keep(owner, granted(owner, the_log, x, heads))
    await _keep(member, granted(owner, the_log, y, heads))  # the member had it from another
    # the owner's heads make the member pull; its pull names a fact the owner lacks
    await _send_heads(owner, member)
    await member.wait_event("member_granted", device_id=x.device_id)
    await owner.wait_event("member_granted", device_id=y.device_id)
    assert await members(owner) == await members(member)
