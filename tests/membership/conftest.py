"""Real daemons and a broker in one trio run (the network tests' mesh), for closed networks."""

from __future__ import annotations

import functools
from typing import Any

from meshactors.clock import wall_ms
from meshactors.identity import Identity
from meshactors.membership.facts import Fact, Invite
from meshactors.membership.frames import LOG_PAGE, InviteRedeem, LogFacts
from meshactors.membership.log import MembershipLog
from tests.membership.logkit import fact as logkit_fact
from tests.network.conftest import Daemon, Mesh, mesh, run_cli  # noqa: F401  (the fixture)

CLOSED = "team"


async def create(owner: Daemon, net: Mesh) -> str:
    """Create CLOSED on `owner`; returns its bootstrap."""
    data = await owner.call("network_create_closed", config={"id": CLOSED, "brokers": [net.url]})
    assert data["owner"] == owner.device_id
    bootstrap: str = data["bootstrap"]
    return bootstrap


async def import_closed(daemon: Daemon, net: Mesh, bootstrap: str) -> dict[str, Any]:
    return await daemon.call(
        "network_import_closed",
        config={"id": CLOSED, "brokers": [net.url]},
        bootstrap=bootstrap,
    )


async def members(daemon: Daemon) -> dict[str, tuple[str | None, str]]:
    """members_list as {device: (role, status)}."""
    rows = (await daemon.call("members_list", network=CLOSED))["members"]
    return {r["device_id"]: (r["role"], r["status"]) for r in rows}


async def active(a: Daemon, b: Daemon) -> None:
    """Wait until each sees the other active in CLOSED."""
    await a.wait_event("peer_active", network=CLOSED, device_id=b.device_id)
    await b.wait_event("peer_active", network=CLOSED, device_id=a.device_id)


async def team(net: Mesh, *names: str, roles: tuple[str, ...] = ()) -> list[Daemon]:
    """An owner (the first name) and members granted `roles` (default member), all active."""
    daemons = [await net.daemon(name) for name in names]
    owner, others = daemons[0], daemons[1:]
    bootstrap = await create(owner, net)
    for n, daemon in enumerate(others):
        await import_closed(daemon, net, bootstrap)
        role = roles[n] if n < len(roles) else "member"
        await owner.call("members_grant", network=CLOSED, device_id=daemon.device_id, role=role)
    for n, daemon in enumerate(daemons):
        for other in daemons[n + 1 :]:
            await active(daemon, other)
    return daemons


async def invite_used_up(net: Mesh) -> tuple[Daemon, Daemon, dict[str, Any]]:
    """An owner's one-use invite taken by a first device, then presented by a second: returns
    the owner, the second device and the `invite_refused` event it got."""
    owner, first, second = [await net.daemon(n) for n in ("owner", "first", "second")]
    await create(owner, net)
    token = (await owner.call("members_invite", network=CLOSED, role="member", uses=1))["token"]
    await first.call("network_join_invite", token=token)
    await first.wait_event("member_granted", network=CLOSED, device_id=first.device_id)
    await active(owner, first)
    await second.call("network_join_invite", token=token)
    refused = await second.wait_event("invite_refused", network=CLOSED)
    return owner, second, refused


async def figures(daemon: Daemon) -> dict[str, Any]:
    """The membership part's figures, asked of the network's core."""
    network = daemon.network(CLOSED)
    result: dict[str, Any] = await network.ask("figures", network.membership.figures)
    return result


async def present(daemon: Daemon, to: Daemon, invite: Invite) -> None:
    """Have `daemon` hold `invite` and present it to `to`, as a device that took it does, but
    without the checks of the op (as a clock behind, or a forger, would)."""
    network = daemon.network(CLOSED)

    async def hold_and_present() -> None:
        network.membership.invite = invite
        await network.peers.send_control(to.device_id, InviteRedeem(invite))

    await network.ask_await("present", hold_and_present)


def granted(owner: Daemon, the_log: MembershipLog, target: Identity, parents: list[str]) -> Fact:
    """The owner's signed grant of membership in CLOSED to `target`, after `parents`."""
    return logkit_fact(
        the_log,
        owner.services.identity,
        "grant",
        target,
        "member",
        wall_ms(),
        parents,
        network=CLOSED,
    )


async def push(sender: Daemon, to: Daemon, facts: list[Fact]) -> None:
    """Have `sender` send `facts` to `to` in pages, as pushes of new facts (or a forger's)."""
    network = sender.network(CLOSED)
    the_log = network.membership.log
    assert the_log is not None
    for start in range(0, len(facts), LOG_PAGE):
        frame = LogFacts(the_log.genesis_hash, facts[start : start + LOG_PAGE])
        await network.ask_await(
            "send facts", functools.partial(network.peers.send_control, to.device_id, frame)
        )
