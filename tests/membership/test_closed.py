"""Closed networks with real daemons and a broker: membership decides who is active."""

from __future__ import annotations

import base64
import functools

import attrs
import pytest
import trio

from meshactors.cli.common import local_time
from meshactors.clock import wall_ms
from meshactors.membership.facts import (
    SIG_CHARS,
    Invite,
    Token,
    from_bootstrap,
    nonce,
    record_hash,
    sign,
    to_bootstrap,
    to_token,
)
from meshactors.membership.frames import LogFacts
from meshactors.network import peers as peers_module
from meshactors.wire.device_id import SHORT_ID
from meshactors.wire.peer import Bye
from tests.membership.conftest import (
    CLOSED,
    active,
    create,
    figures,
    import_closed,
    invite_used_up,
    members,
    present,
    team,
)
from tests.network.appclient import AppClient
from tests.network.conftest import Mesh, OpFailed, run_cli
from tests.network.rawpeer import RawPeer


async def test_a_non_member_never_shows_as_pending_and_a_grant_makes_it_active(
    mesh: Mesh,
) -> None:
    owner, stranger = await mesh.daemon("owner"), await mesh.daemon("stranger")
    bootstrap = await create(owner, mesh)
    await import_closed(stranger, mesh, bootstrap)
    await owner.wait_event("peer_denied", network=CLOSED, device_id=stranger.device_id)
    shown = (await owner.call("peers_list", network=CLOSED))["peers"]
    assert shown == []
    seen = await owner.peer(stranger, CLOSED)
    assert seen is not None and seen["status"] == "denied"
    assert seen["frames"]["rejected_non_member"] >= 1
    assert not [e for e in owner.events if e["kind"] == "peer_pending"]
    with pytest.raises(OpFailed) as refused:
        await owner.call("roster_approve", network=CLOSED, device_id=stranger.device_id)
    assert refused.value.code == "conflict"
    await owner.call("members_grant", network=CLOSED, device_id=stranger.device_id, role="member")
    await active(owner, stranger)
    assert (await members(stranger))[stranger.device_id] == ("member", "member")


async def test_an_invite_works_once_and_not_twice(mesh: Mesh) -> None:
    owner, second, refused = await invite_used_up(mesh)
    assert refused["reason"] == "the invite was used up"
    assert second.device_id not in await members(owner)
    shown = (await second.call("networks_list"))["networks"][0]["membership"]
    assert shown["invite_pending"] is False
    assert shown["invite_refused"]["reason"] == "the invite was used up"
    assert shown["invite_refused"]["by"] == owner.device_id


async def test_an_invite_for_a_network_joined_already_is_presented_at_once(mesh: Mesh) -> None:
    owner, late = await mesh.daemon("owner"), await mesh.daemon("late")
    await import_closed(late, mesh, await create(owner, mesh))
    await owner.wait_event("peer_denied", network=CLOSED, device_id=late.device_id)
    token = (await owner.call("members_invite", network=CLOSED, role="member"))["token"]
    joined = await late.call("network_join_invite", token=token)
    assert joined["network"]["membership"]["invite_pending"] is True
    await late.wait_event("member_granted", network=CLOSED, device_id=late.device_id)
    await active(owner, late)


async def test_an_invite_for_a_network_joined_with_its_own_label_keeps_that_config(
    mesh: Mesh,
) -> None:
    owner, late = await mesh.daemon("owner"), await mesh.daemon("late")
    bootstrap = await create(owner, mesh)
    config = {"id": CLOSED, "brokers": [mesh.url], "label": "work"}
    await late.call("network_import_closed", config=config, bootstrap=bootstrap)
    await owner.wait_event("peer_denied", network=CLOSED, device_id=late.device_id)
    token = (await owner.call("members_invite", network=CLOSED, role="member"))["token"]
    joined = await late.call("network_join_invite", token=token, label="other")
    assert joined["network"]["membership"]["invite_pending"] is True
    await late.wait_event("member_granted", network=CLOSED, device_id=late.device_id)
    await active(owner, late)
    listed = (await late.call("networks_list"))["networks"][0]
    assert listed["label"] == "work"


async def test_an_invite_for_a_member_or_an_evicted_device_is_a_conflict(mesh: Mesh) -> None:
    owner, member, gone = await team(mesh, "owner", "member", "gone")
    await owner.call("members_evict", network=CLOSED, device_id=gone.device_id)
    await gone.wait_event("evicted", network=CLOSED)
    invite = functools.partial(owner.call, "members_invite", network=CLOSED)
    for daemon, role, said in (
        (member, "member", "a member of team already (role member)"),
        (member, "admin", "a member of team already (role member)"),
        (gone, "member", "evicted from team"),
    ):
        with pytest.raises(OpFailed) as refused:
            await daemon.call("network_join_invite", token=(await invite(role=role))["token"])
        assert refused.value.code == "conflict" and said in str(refused.value)
        listed = (await daemon.call("networks_list"))["networks"][0]
        assert listed["membership"]["invite_pending"] is False


async def test_an_invite_past_its_time_is_refused_with_its_reason(mesh: Mesh) -> None:
    owner, late = await mesh.daemon("owner"), await mesh.daemon("late")
    bootstrap = await create(owner, mesh)
    genesis = from_bootstrap(bootstrap)
    expired = sign(
        owner.services.identity,
        Invite(
            CLOSED,
            record_hash(genesis),
            owner.device_id,
            "member",
            wall_ms() - 1,
            1,
            nonce(),
            "A" * SIG_CHARS,
        ),
    )
    token = to_token(Token(genesis, expired, [mesh.url]))
    with pytest.raises(OpFailed) as refused:
        await late.call("network_join_invite", token=token)
    assert refused.value.code == "invite_refused"
    # presented anyway (a clock behind), the owner refuses it too, saying why
    await import_closed(late, mesh, bootstrap)
    await owner.wait_event("peer_denied", network=CLOSED, device_id=late.device_id)
    await present(late, owner, expired)
    answer = await late.wait_event("invite_refused", network=CLOSED)
    assert answer["reason"] == "the invite expired"
    assert late.device_id not in await members(owner)


async def test_a_forged_genesis_is_refused(mesh: Mesh) -> None:
    owner, thief = await mesh.daemon("owner"), await mesh.daemon("thief")
    genesis = from_bootstrap(await create(owner, mesh))
    forged = to_bootstrap(attrs.evolve(genesis, owner=thief.device_id))
    with pytest.raises(OpFailed) as refused:
        await import_closed(thief, mesh, forged)
    assert refused.value.code == "invalid_params"


async def test_a_token_or_bootstrap_nested_too_deeply_is_invalid_params(mesh: Mesh) -> None:
    stranger = await mesh.daemon("stranger")
    deep_token = "mshi1." + base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("=")
    deep_bootstrap = "mshg1." + base64.urlsafe_b64encode(b"[" * 1400).decode().rstrip("=")
    with pytest.raises(OpFailed) as refused:
        await stranger.call("network_join_invite", token=deep_token)
    assert refused.value.code == "invalid_params"
    with pytest.raises(OpFailed) as refused:
        await import_closed(stranger, mesh, deep_bootstrap)
    assert refused.value.code == "invalid_params"


async def test_a_member_cannot_grant_and_its_forced_fact_is_void_everywhere(mesh: Mesh) -> None:
    owner, member = await team(mesh, "owner", "member")
    stranger = await mesh.daemon("stranger")
    with pytest.raises(OpFailed) as refused:
        await member.call(
            "members_grant", network=CLOSED, device_id=stranger.device_id, role="member"
        )
    assert refused.value.code == "forbidden"
    network = member.network(CLOSED)
    rogue = functools.partial(
        network.membership._author, "grant", stranger.device_id, "member", None, background=False
    )
    await network.ask_await("a rogue grant", rogue)
    await member.call("profile_set", display_name="after")  # frames arrive in order
    await owner.wait_event("peer_profile", network=CLOSED, device_id=member.device_id)
    assert stranger.device_id not in await members(owner)
    assert (await figures(owner))["void"] == 1
    # the same fact again is a replay: dropped and counted
    fact = network.membership.log.facts[network.membership.log.heads()[0]]
    await network.ask_await(
        "replay",
        functools.partial(
            network.peers.send_control,
            owner.device_id,
            LogFacts(network.membership.log.genesis_hash, [fact]),
        ),
    )
    await member.call("profile_set", display_name="again")
    await owner.wait_event(
        "peer_profile",
        network=CLOSED,
        device_id=member.device_id,
        profile={"display_name": "again", "status": "idle", "summary": "", "visible": True},
    )
    assert (await figures(owner))["dropped"]["duplicate"] == 1


async def test_evict_reaches_a_member_that_was_offline_and_it_cuts_the_device_off(
    mesh: Mesh,
) -> None:
    owner, target, away = await team(mesh, "owner", "target", "away")
    seen = away.last_event_id
    await away.stop()
    await owner.call("members_evict", network=CLOSED, device_id=target.device_id)
    evicted = await target.wait_event("evicted", network=CLOSED)
    assert evicted["granted_by"] == owner.device_id
    listed = (await target.call("networks_list"))["networks"][0]
    assert listed["phase"] == "stopped"
    assert listed["membership"]["evicted"]["by"] == owner.device_id
    await owner.wait_event("peer_left", network=CLOSED, device_id=target.device_id)  # it parked
    back = await mesh.daemon("away")
    await back.wait_event("member_evicted", after=seen, network=CLOSED, device_id=target.device_id)
    shown = await back.peer(target, CLOSED)
    assert shown is None or (shown["approval"], shown["status"]) != ("approved", "active")
    assert (await members(back)) == (await members(owner))
    await target.stop()
    target = await mesh.daemon("target")  # still evicted after a restart: it stays away
    listed = (await target.call("networks_list"))["networks"][0]
    assert listed["phase"] == "stopped" and listed["membership"]["evicted"] is not None


async def test_two_admins_grant_and_evict_one_device_concurrently_and_all_converge(
    mesh: Mesh,
) -> None:
    owner, left, right = await team(mesh, "owner", "left", "right", roles=("admin", "admin"))
    device = await mesh.daemon("device")
    port = mesh.broker_port
    mesh.stop_broker()  # a partition: each admin acts alone
    for daemon in (owner, left, right):
        await daemon.wait_event("network_phase", network=CLOSED, phase="degraded")
    marks = {d.name: d.last_event_id for d in (owner, left, right)}
    await left.call("members_grant", network=CLOSED, device_id=device.device_id, role="member")
    await right.call("members_evict", network=CLOSED, device_id=device.device_id)
    await mesh.start_broker(port)
    for daemon in (owner, left, right):
        await daemon.wait_event(
            "member_evicted", after=marks[daemon.name], device_id=device.device_id
        )
    # the evict holds wherever the grant falls: every view agrees once each holds the evict
    views = [await members(d) for d in (owner, left, right)]
    assert views[0] == views[1] == views[2]
    assert views[0][device.device_id] == (None, "evicted")


async def test_a_strangers_own_facts_are_not_kept(mesh: Mesh) -> None:
    owner, stranger = await mesh.daemon("owner"), await mesh.daemon("stranger")
    bootstrap = await create(owner, mesh)
    await import_closed(stranger, mesh, bootstrap)
    await owner.wait_event("peer_denied", network=CLOSED, device_id=stranger.device_id)
    network = stranger.network(CLOSED)
    for _ in range(3):
        junk = functools.partial(
            network.membership._author, "grant", stranger.device_id, "owner", None, background=False
        )
        await network.ask_await("junk", junk)
    # an invite of its own making, refused by the owner after the facts (frames keep order)
    genesis = from_bootstrap(bootstrap)
    own = sign(
        stranger.services.identity,
        Invite(
            CLOSED,
            record_hash(genesis),
            stranger.device_id,
            "member",
            wall_ms() + 60_000,
            1,
            nonce(),
            "A" * SIG_CHARS,
        ),
    )
    await present(stranger, owner, own)
    refused = await stranger.wait_event("invite_refused", network=CLOSED)
    assert refused["reason"] == "the invite's issuer may no longer grant that role"
    assert (await figures(owner))["facts"] == 0
    assert (await figures(owner))["dropped"] == {"not_a_member": 3, "invite_refused": 1}


async def test_a_revoked_member_is_cut_off(mesh: Mesh) -> None:
    owner, member = await team(mesh, "owner", "member")
    mark = member.last_event_id
    await owner.call("members_revoke", network=CLOSED, device_id=member.device_id, role="member")
    revoked = await member.wait_event("member_revoked", after=mark, device_id=member.device_id)
    assert revoked["status"] == "revoked"
    await owner.wait_event("peer_denied", network=CLOSED, device_id=member.device_id)
    with pytest.raises(OpFailed) as refused:
        await member.call("rpc_call", network=CLOSED, peer=owner.device_id, method="m", payload=1)
    assert refused.value.code in ("peer_not_active", "no_such_peer")


async def test_a_revoke_of_a_role_not_held_names_the_role_held(mesh: Mesh) -> None:
    owner, admin = await team(mesh, "owner", "admin", roles=("admin",))
    short = admin.device_id[:SHORT_ID]
    with pytest.raises(OpFailed) as wrong:
        await owner.call("members_revoke", network=CLOSED, device_id=admin.device_id, role="member")
    assert wrong.value.code == "conflict"
    assert f"{short} holds admin, not member: use --role admin" in str(wrong.value)
    await owner.call("members_revoke", network=CLOSED, device_id=admin.device_id, role="admin")
    with pytest.raises(OpFailed) as again:
        await owner.call("members_revoke", network=CLOSED, device_id=admin.device_id, role="admin")
    assert f"{short} holds no role in {CLOSED}: nothing to revoke" in str(again.value)


async def test_members_list_shows_who_set_each_standing_and_when(mesh: Mesh) -> None:
    owner, member = await team(mesh, "owner", "member")
    listed = await run_cli(owner, "members", "list", "-n", CLOSED)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["DEVICE", "ROLE", "STATUS", "BY", "WHEN"]
    row = (await owner.call("members_list", network=CLOSED))["members"]
    granted = next(m for m in row if m["device_id"] == member.device_id)
    shown = next(line for line in lines if line.startswith(member.device_id))
    by, when = granted["granted_by"][:SHORT_ID], local_time(granted["at"])
    assert shown.split(maxsplit=4)[1:] == ["member", "member", by, when]


async def test_an_admin_revoked_while_away_learns_it_and_may_no_longer_grant(mesh: Mesh) -> None:
    owner, admin, third = await team(mesh, "owner", "admin", "third", roles=("admin",))
    await admin.stop()
    await owner.call("members_revoke", network=CLOSED, device_id=admin.device_id, role="admin")
    await owner.call("members_revoke", network=CLOSED, device_id=third.device_id, role="member")
    admin = await mesh.daemon("admin")  # not a member now, yet served up to its own revoke
    revoked = await admin.wait_event("member_revoked", device_id=admin.device_id)
    assert revoked["granted_by"] == owner.device_id
    learnt = [e["device_id"] for e in admin.events if e["kind"] == "member_revoked"]
    assert learnt == [admin.device_id]  # not the revoke after its own
    assert (await members(admin))[admin.device_id] == (None, "revoked")
    assert (await admin.call("networks_list"))["networks"][0]["membership"]["role"] is None
    with pytest.raises(OpFailed) as refused:
        await admin.call("members_grant", network=CLOSED, device_id=third.device_id, role="member")
    assert refused.value.code == "forbidden"


async def test_only_members_author_writes_of_the_state_map(mesh: Mesh) -> None:
    """The writer check a closed network gives the replicated state map (issue 20 item 5)."""
    owner, member = await team(mesh, "owner", "member")
    stranger = await mesh.daemon("stranger")
    network = owner.network(CLOSED)

    def check() -> list[bool]:
        may_write = network.membership.state_writers(lambda _sender, _author: True)
        return [may_write(member.device_id, d.device_id) for d in (owner, member, stranger)]

    assert await network.ask("check writers", check) == [True, True, False]


async def test_a_member_that_restarts_is_heard_again_under_its_remembered_replay_state(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """A closed network keeps no roster, so the owner lets a member that leaves go (all but its
    opener); the member restarted starts a newer session, which that opener accepts: traffic
    flows again, nothing is taken for a replay, and the opener's count goes on."""
    owner, member = await team(mesh, "owner", "member")
    before = await owner.peer(member, CLOSED)
    assert before is not None and before["frames"]["opened"] > 0
    await member.stop()
    await owner.wait_event("peer_left", network=CLOSED, device_id=member.device_id)
    assert await owner.peer(member, CLOSED) is None  # let go of, not listed
    assert owner.network(CLOSED).peers.figures()["openers_kept"] == 1
    mark = owner.last_event_id
    member = await mesh.daemon("member")
    await owner.wait_event("peer_active", after=mark, network=CLOSED, device_id=member.device_id)
    reader = await AppClient.open(owner.services.paths.socket, nursery)
    sender = await AppClient.open(member.services.paths.socket, nursery)
    await reader.call("channel_subscribe", network=CLOSED, channel="news")
    await member.wait_event("peer_active", network=CLOSED, device_id=owner.device_id)
    await sender.call(
        "channel_send_to", network=CLOSED, channel="news", peer=owner.device_id, payload=1
    )
    assert (await reader.event("channel_inbound"))["payload"] == 1
    after = await owner.peer(member, CLOSED)
    assert after is not None and after["frames"]["replayed"] == 0
    assert after["frames"]["opened"] > before["frames"]["opened"]
    assert owner.network(CLOSED).peers.figures()["openers_kept"] == 0


async def test_devices_that_say_bye_keep_no_member_out_of_a_full_table(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed network keeps no roster entry, so nothing but presence holds a place: a device
    that says Bye and leaves has none, and one still at the broker after its Bye is let go
    first, like a silent one. Non-members doing so cannot keep a member from being active."""
    monkeypatch.setattr(peers_module, "MAX_PEERS", 1)
    owner, member = await mesh.daemon("owner"), await mesh.daemon("member")
    bootstrap = await create(owner, mesh)
    for stays in (False, False, True):
        raw = RawPeer(CLOSED)
        async with trio.open_nursery() as presence:
            await raw.join(mesh.url, nursery if stays else presence)
            await raw.hello(owner.device_id)
            await owner.wait_event("peer_denied", network=CLOSED, device_id=raw.device_id)
            await raw.send_frame(owner.device_id, Bye("network removed"))
            await owner.wait_event("peer_left", network=CLOSED, device_id=raw.device_id)
            presence.cancel_scope.cancel()
    await import_closed(member, mesh, bootstrap)
    await owner.call("members_grant", network=CLOSED, device_id=member.device_id, role="member")
    await active(owner, member)
    assert await owner.peer(raw.device_id, CLOSED) is None  # still present, let go for it


async def test_roster_remove_is_a_conflict_that_leaves_a_member_active(mesh: Mesh) -> None:
    """A closed network keeps no roster: removing a member from it is refused as the other
    roster ops are, and tells the member nothing (it would see us pending)."""
    owner, member = await team(mesh, "owner", "member")
    with pytest.raises(OpFailed) as refused:
        await owner.call("roster_remove", network=CLOSED, device_id=member.device_id)
    assert refused.value.code == "conflict"
    assert "membership replaces approval" in str(refused.value)
    mark = member.last_event_id
    await owner.call("capabilities_set", network=CLOSED, capabilities={"tags": ["after"]})
    await member.wait_event("peer_capabilities", after=mark, device_id=owner.device_id)
    seen = await member.peer(owner, CLOSED)  # told after any approval the remove had sent
    assert seen is not None and (seen["status"], seen["peer_approval"]) == ("active", "approved")
