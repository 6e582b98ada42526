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


async def test_one_sided_approval_is_never_active(mesh: Mesh) -> None:
    a, b, c = await mesh.daemon("a"), await mesh.daemon("b"), await mesh.daemon("c")
    for daemon in (a, b, c):
        await daemon.join(mesh.url)
    await approve_both(a, b)
    await a.call("roster_approve", network=NET, device_id=c.device_id)
    # Frames between two daemons arrive in order: once c has seen a's later profile, it has
    # also seen a's approval.
    await a.call("profile_set", display_name="Ann")
    await c.wait_event("peer_profile", device_id=a.device_id)
    from_c = await c.peer(a)
    from_a = await a.peer(c)
    assert from_c is not None and from_a is not None
    assert (from_c["status"], from_c["approval"], from_c["peer_approval"]) == (
        "pending",
        "pending",
        "approved",
    )
    assert (from_a["status"], from_a["approval"], from_a["peer_approval"]) == (
        "pending",
        "approved",
        "pending",
    )
    roster = (await c.call("roster_list", network=NET))["roster"]
    assert {(r["device_id"], r["state"]) for r in roster} == {
        (a.device_id, "pending"),
        (b.device_id, "pending"),
    }
    assert not [e for e in a.events if e["kind"] == "peer_active" and e["device_id"] == c.device_id]
