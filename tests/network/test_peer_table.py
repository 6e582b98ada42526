"""The peer table is bounded, and devices that said hello and left cannot fill it for good:
when it is full, the absent peer this daemon has not approved that was seen longest ago
makes room (its roster entry stays); present and approved peers are never evicted."""

from __future__ import annotations

import pytest
import trio

from meshactors.network import peers
from tests.network.conftest import NET, Daemon, Mesh
from tests.network.rawpeer import RawPeer


async def _hello_then(mesh: Mesh, b: Daemon, nursery: trio.Nursery, *, stay: bool) -> RawPeer:
    """A hand-made peer says hello to `b` (which keeps it pending) and, unless it stays,
    leaves the broker once `b` saw it."""
    raw = RawPeer(NET)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        with scope:
            async with trio.open_nursery() as own:
                await raw.join(mesh.url, own)
                task_status.started()
                await trio.sleep_forever()

    await nursery.start(run)
    after = b.last_event_id
    await raw.hello(b.device_id)
    await b.wait_event("peer_pending", device_id=raw.device_id, after=after)
    if not stay:
        scope.cancel()
        await b.wait_event("peer_left", device_id=raw.device_id, after=after)
    return raw


async def test_a_full_table_makes_room_from_devices_that_left_unapproved(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "MAX_PEERS", 3)
    b = await mesh.daemon("b")
    await b.join(mesh.url)
    approved = await _hello_then(mesh, b, nursery, stay=False)
    await b.call("roster_approve", network=NET, device_id=approved.device_id)
    left = await _hello_then(mesh, b, nursery, stay=False)
    present = await _hello_then(mesh, b, nursery, stay=True)
    newcomer = await _hello_then(mesh, b, nursery, stay=True)  # the table was full
    known = {p["device_id"] for p in await b.network().peers.list_peers(include_all=True)}
    assert known == {approved.device_id, present.device_id, newcomer.device_id}
    roster = {row["device_id"]: row["state"] for row in await b.network().peers.list_roster()}
    assert roster[left.device_id] == "pending"  # forgotten from the table only
    assert b.network().peers.dropped["evicted"] == 1
