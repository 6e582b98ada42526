"""A broker and three daemons in one trio run: join, approval, traffic rules, caps, profile."""

from __future__ import annotations

from tests.network.conftest import NET, Mesh, approve_both


async def test_two_daemons_join_see_each_other_and_approve_both_ways(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await a.wait_event("peer_pending", device_id=b.device_id)
    await b.wait_event("peer_pending", device_id=a.device_id)
    await approve_both(a, b)
    seen = await a.peer(b)
    assert seen is not None
    assert seen["status"] == "active"
    assert seen["label"] == "b"
    assert seen["role"] == "daemon"
    assert seen["protocol"] == "1.0"
    networks = (await a.call("networks_list"))["networks"]
    assert [(n["id"], n["phase"]) for n in networks] == [(NET, "active")]
