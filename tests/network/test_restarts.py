"""Restarts lose nothing silently: `debug_crash` (with `--debug-ops`) crashes any actor of the
live tree, and after it restarts, traffic, subscriptions and reliable sends carry on."""

from __future__ import annotations

import pytest
import trio

from tests.network.appclient import AppClient, network_children
from tests.network.conftest import NET, WAIT, Daemon, Mesh, OpFailed, approve_both

WAIT_MS = int(WAIT * 1000)


async def client_of(daemon: Daemon, nursery: trio.Nursery) -> AppClient:
    return await AppClient.open(daemon.services.paths.socket, nursery)


async def debug_pair(mesh: Mesh) -> tuple[Daemon, Daemon]:
    """Daemons a and b with `--debug-ops`, joined to NET and active both ways."""
    a, b = await mesh.daemon("a", debug_ops=True), await mesh.daemon("b", debug_ops=True)
    await a.join(mesh.url)
    await b.join(mesh.url)
    await approve_both(a, b)
    return a, b


async def test_debug_crash_is_unknown_without_the_flag(mesh: Mesh) -> None:
    daemon = await mesh.daemon("plain")
    with pytest.raises(OpFailed) as failure:
        await daemon.call("debug_crash", path="daemon/outbox")
    assert failure.value.code == "unknown_op"
    assert "debug_crash" not in (await daemon.call("version"))["ops"]


async def test_debug_crash_restarts_the_actor_at_the_path(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    daemon = await mesh.daemon("debug", debug_ops=True)
    assert "debug_crash" in (await daemon.call("version"))["ops"]
    client = await AppClient.open(daemon.services.paths.socket, nursery)
    before = await client.call("status")
    crashed = await daemon.call("debug_crash", path="daemon/outbox")
    assert crashed == {"path": "daemon/outbox", "kind": "outbox", "crashed": True}
    with pytest.raises(OpFailed) as missing:
        await daemon.call("debug_crash", path="daemon/nothing here")
    assert missing.value.code == "not_found"
    with pytest.raises(OpFailed) as root:
        await daemon.call("debug_crash", path="daemon")
    assert root.value.code == "conflict"
    after = await client.call("status")
    assert after["client_id"] == before["client_id"]
    assert daemon.services.tree.children["outbox"].restarts == 1
    assert daemon.services.tree.children["control"].restarts == 0


async def reliable(sender: AppClient, peer: Daemon, channel: str, payload: object) -> object:
    """A reliable send, resent until acknowledged; returns how many subscribers it reached."""
    acked = await sender.call(
        "channel_send_reliable",
        network=NET,
        channel=channel,
        peer=peer.device_id,
        payload=payload,
        ttl_ms=WAIT_MS,
    )
    return acked["subscribers"]


@pytest.mark.parametrize(
    "actor", ["link", "peers", "rpc", "channels", "channel news", "network root"]
)
async def test_a_subscription_still_delivers_after_a_network_actor_crashes(
    mesh: Mesh, nursery: trio.Nursery, actor: str
) -> None:
    a, b = await debug_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    assert await reliable(sender, b, "news", 1) == 1
    network = f"daemon/networks/network {NET}"
    path = network if actor == "network root" else f"{network}/{actor}"
    await b.call("debug_crash", path=path)
    assert await reliable(sender, b, "news", 2) == 1
    received = await reader.count("channel_inbound", 2)
    assert [event["payload"] for event in received] == [1, 2]
    children = network_children(await b.call("inspect"), NET)
    me = (await reader.call("status"))["client_id"]
    assert children["channel news"]["figures"]["subscribers"] == [me]
