"""Restarts lose nothing silently: `debug_crash` (with `--debug-ops`) crashes any actor of the
live tree, and after it restarts, traffic, subscriptions and reliable sends carry on."""

from __future__ import annotations

import pytest
import trio

from tests.network.appclient import AppClient
from tests.network.conftest import Daemon, Mesh, OpFailed, approve_both


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
