"""Application frames flow between active peers only; capabilities and profile reach them live."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from meshactors.wire.device_id import SHORT_ID
from meshactors.wire.peer import Frame, register_frame
from tests.network.conftest import NET, WAIT, Mesh, OpFailed, active_pair


@register_frame("test_note", app=True)
@attrs.frozen
class NoteFrame(Frame):
    """A stand-in for the application frames that RPC and channels will add."""

    text: str


@attrs.define
class NoteLog:
    """Notes a daemon's network handed to the registered handler."""

    notes: list[tuple[str, str]] = attrs.field(factory=list)
    arrived: trio.Event = attrs.field(factory=trio.Event)

    def __call__(self, sender: str, frame: Frame) -> None:
        assert isinstance(frame, NoteFrame)
        self.notes.append((sender, frame.text))
        self.arrived.set()
        self.arrived = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(WAIT):
            while len(self.notes) < count:
                await self.arrived.wait()


async def test_active_peers_exchange_app_frames_in_batches(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    inbox = NoteLog()
    b.network().register_app_handler("test_note", inbox)
    batches_before = a.network().link.batches_out
    async with trio.open_nursery() as nursery:
        for i in range(500):
            nursery.start_soon(a.network().send_to_peer, b.device_id, NoteFrame(f"n{i}"))
    await inbox.wait_for(500)
    assert {text for _, text in inbox.notes} == {f"n{i}" for i in range(500)}
    assert {sender for sender, _ in inbox.notes} == {a.device_id}
    sent_in = a.network().link.batches_out - batches_before
    assert sent_in <= 50, sent_in  # many frames per WebSocket message


async def test_send_to_peer_refuses_peers_that_are_not_active(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await a.wait_event("peer_pending", device_id=b.device_id)
    with pytest.raises(Exception) as not_active:
        await a.network().send_to_peer(b.device_id, NoteFrame("too early"))
    assert getattr(not_active.value, "code", None) == "peer_not_active"
    with pytest.raises(Exception) as unknown:
        await a.network().send_to_peer(a.device_id, NoteFrame("nobody"))
    assert getattr(unknown.value, "code", None) == "no_such_peer"


async def test_not_active_says_which_side_has_to_approve_and_how(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await a.wait_event("peer_pending", device_id=b.device_id)
    await b.wait_event("peer_pending", device_id=a.device_id)
    await a.call("roster_approve", network=NET, device_id=b.device_id)
    for caller, callee in ((a, b), (b, a)):
        with pytest.raises(OpFailed) as refused:
            await caller.call("rpc_call", network=NET, peer=callee.device_id, method="m")
        assert refused.value.code == "peer_not_active"
        said = (
            f"peer {callee.name} ({callee.device_id[:SHORT_ID]}) is pending in {NET}, not active: "
        )
        approve = f"meshactors roster approve {a.device_id[:SHORT_ID]} -n {NET}"
        if caller is a:
            said += f"it has not approved us yet: run {approve} on that device"
        else:
            said += f"we have not approved it: {approve}"
        assert said in str(refused.value)


async def test_removed_peer_is_cut_off_at_once(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    inbox = NoteLog()
    a.network().register_app_handler("test_note", inbox)
    await b.network().send_to_peer(a.device_id, NoteFrame("before"))
    await inbox.wait_for(1)
    after = a.last_event_id
    await a.call("roster_remove", network=NET, device_id=b.device_id)
    with pytest.raises(Exception) as cut:
        await a.network().send_to_peer(b.device_id, NoteFrame("after"))
    assert getattr(cut.value, "code", None) == "peer_not_active"
    await b.wait_event("peer_pending", device_id=a.device_id)  # b learnt it is no longer approved
    assert (await a.peer(b) or {})["status"] == "pending"
    assert a.last_event_id > after
    with pytest.raises(OpFailed) as again:
        await a.call("roster_remove", network=NET, device_id=b.device_id)
    assert again.value.code == "not_found"


async def test_capabilities_reach_peers_with_nested_extra_intact(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    extra: dict[str, Any] = {"gpu": {"models": ["x", {"deep": [1, 2.5, None, True]}]}, "n": 3}
    caps = {"tags": ["render", "cpu"], "app_version": "2.1", "max_connections": 8, "extra": extra}
    await a.call("capabilities_set", network=NET, capabilities=caps)
    event = await b.wait_event("peer_capabilities", device_id=a.device_id)
    assert event["capabilities"] == caps
    assert (await b.peer(a) or {})["capabilities"] == caps


async def test_bad_capabilities_are_refused_with_the_field_named(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    for bad, word in [
        ({"tags": "x"}, "array"),
        ({"max_connections": "8"}, "int"),
        ({"extra": {"a": "x" * 20_000}}, "extra"),
        ({"color": 1}, "color"),
    ]:
        with pytest.raises(OpFailed) as refused:
            await a.call("capabilities_set", network=NET, capabilities=bad)
        assert refused.value.code == "invalid_params"
        assert word in str(refused.value)


async def test_profile_reaches_peers_and_an_invisible_daemon_still_answers(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await a.call("profile_set", display_name="Ann", status="working", summary="on it")
    event = await b.wait_event("peer_profile", device_id=a.device_id)
    assert event["profile"] == {
        "display_name": "Ann",
        "status": "working",
        "summary": "on it",
        "visible": True,
    }
    after = b.last_event_id
    await a.call("profile_set", network=NET, display_name="Ann", visible=False)
    hidden = await b.wait_event("peer_profile", device_id=a.device_id, after=after)
    assert hidden["profile"]["visible"] is False
    assert hidden["profile"]["display_name"] == ""  # nothing else is revealed
    listed = (await b.call("peers_list", network=NET))["peers"]
    assert a.device_id not in [p["device_id"] for p in listed]
    assert (await b.peer(a) or {})["status"] == "active"  # `all` still shows it
    inbox = NoteLog()
    a.network().register_app_handler("test_note", inbox)
    await b.network().send_to_peer(a.device_id, NoteFrame("still there?"))
    await inbox.wait_for(1)


async def test_profile_set_changes_only_the_fields_given_and_reads_back(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await a.call("profile_set", display_name="Ann", summary="on it")
    await a.call("profile_set", status="dnd", display_name=None)  # null keeps it too
    ann = {"display_name": "Ann", "status": "dnd", "summary": "on it", "visible": True}
    assert await a.call("profile_get") == {"network": None, "profile": ann, "inherited": False}
    assert await a.call("profile_get", network=NET) == {
        "network": NET,
        "profile": ann,
        "inherited": True,
    }
    await b.wait_event("peer_profile", device_id=a.device_id, profile=ann)  # peers see it too
    assert (await a.call("profile_set", network=NET))["profile"] == ann  # nothing to change
    assert (await a.call("profile_get", network=NET))["inherited"] is True
    await a.call("profile_set", network=NET, summary="")  # "" clears; starts from the global one
    mine = await a.call("profile_get", network=NET)
    assert (mine["profile"], mine["inherited"]) == ({**ann, "summary": ""}, False)
    assert (await a.call("profile_get"))["profile"] == ann
    with pytest.raises(OpFailed) as unknown:
        await a.call("profile_get", network="elsewhere")
    assert unknown.value.code == "no_such_network"


async def test_bad_profile_is_refused(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    with pytest.raises(OpFailed) as refused:
        await a.call("profile_set", status="asleep")
    assert refused.value.code == "invalid_params"
    assert "status" in str(refused.value)
