"""Frames from an active peer about something we never had (a call, a reliable channel message,
a durable message) change nothing and are counted, as stray answers and stream frames are:
`rpc_cancel` and `rpc_credit` (rpc `stray_cancels`, `stray_credits`), `chan_ack` (channels
`stray_acks`) and `msg_ack` (outbox `stray_acks`)."""

from __future__ import annotations

from typing import Any

import trio

from meshactors.daemon.outbox import Outbox
from meshactors.network.app_frames import ChanAck, RpcCall, RpcCancel, RpcCredit
from meshactors.network.app_wire import AppWire
from meshactors.network.message_frames import Msg, MsgAck, MsgBatch
from meshactors.network.rpc import Rpc
from meshactors.wire.peer import Approval
from tests.network.appclient import network_children
from tests.network.conftest import NET, WAIT, Mesh
from tests.network.peerstandin import RecordingPeers
from tests.network.rawpeer import approved_raw_peer

STRAYS = 150  # frames of each kind, each about an id never used


def _figures(tree: dict[str, Any], name: str) -> dict[str, Any]:
    figures: dict[str, Any] = network_children(tree, NET)["core"]["figures"][name]
    return figures


async def test_stray_cancels_credits_and_acks_are_counted(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b, raw = await approved_raw_peer(mesh, nursery)
    for n in range(STRAYS):
        await raw.send_frame(b.device_id, RpcCancel(f"call-{n}", "cancelled"))
        await raw.send_frame(b.device_id, RpcCredit(f"call-{n}", 1))
        await raw.send_frame(b.device_id, ChanAck(f"chan-{n}", 1))
    before = b.last_event_id
    await raw.send_frame(b.device_id, Approval("pending"))  # core reads it after the strays
    await b.wait_event("peer_pending", after=before, device_id=raw.device_id)
    tree = await b.call("inspect")
    rpc = _figures(tree, "rpc")["counters"]
    assert (rpc["stray_cancels"], rpc["stray_credits"]) == (STRAYS, STRAYS)
    assert _figures(tree, "channels")["counters"]["stray_acks"] == STRAYS

    await raw.send_frame(b.device_id, Approval("approved"))
    sent = await b.call("send", network=NET, to=raw.device_id, message="real")
    with trio.fail_after(WAIT):
        while not isinstance(frame := (await raw.receive())[1], Msg | MsgBatch):
            pass
    (msg,) = frame.msgs if isinstance(frame, MsgBatch) else [frame]
    assert isinstance(msg, Msg)
    for n in range(STRAYS):
        await raw.send_frame(b.device_id, MsgAck(f"msg-{n}", "stored"))
    await raw.send_frame(b.device_id, MsgAck(msg.ref, "stored"))  # recorded after them
    await b.wait_event("message_delivered", id=sent["id"])
    outbox = b.services.outbox
    assert isinstance(outbox, Outbox)
    assert (outbox.figures()["stray_acks"], outbox.figures()["delivered"]) == (STRAYS, 1)


def _tell_now(told: Any) -> bool:
    """Rpc's `tell` with the test's task as core: run at once."""
    told()
    return True


async def test_a_credit_for_a_call_that_is_no_stream_is_stray(nursery: trio.Nursery) -> None:
    peers = RecordingPeers(["caller"])
    rpc = Rpc("net", AppWire(peers, "me"), _tell_now)
    await nursery.start(rpc.run)

    class _Server:
        client_id = "c1"
        gone = False

        def push(self, kind: str, data: dict[str, Any], *, reserved: bool = False) -> bool:
            return True

    rpc.register(_Server(), "plain", streaming=False)
    peers.deliver(RpcCall("r1", "plain", None, False, False, 60_000))
    peers.deliver(RpcCredit("r1", 1))
    assert rpc.figures()["counters"] == {"calls_in": 1, "stray_credits": 1}
    peers.deliver(RpcCancel("r1", "cancelled"))  # the call it cancels is served here
    assert rpc.figures()["counters"] == {"calls_in": 1, "stray_credits": 1}
