"""A daemon that approves peers automatically tells a peer so even when the peer's hello was an
answer to its own (which said `pending`): in a broker cluster only one side may see the other
join first, and a peer left believing `pending` never became active."""

from __future__ import annotations

import trio

from meshactors.wire.peer import Approval, Hello
from tests.network.conftest import NET, WAIT, Mesh
from tests.network.rawpeer import RawPeer


async def test_an_answer_hello_auto_approved_is_told_approved(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b = await mesh.daemon("b")
    await b.join(mesh.url, auto_approve=True)
    raw = RawPeer(NET)
    await raw.join(mesh.url, nursery)  # b sees it join and says hello first
    with trio.fail_after(WAIT):
        while True:
            sender, frame = await raw.receive()
            if isinstance(frame, Hello):
                break
        assert (sender, frame.answer, frame.approval) == (b.device_id, False, "pending")
        await raw.hello(b.device_id, answer=True)  # the answer: b approves it only now
        while True:
            _, frame = await raw.receive()
            if isinstance(frame, Approval):
                break
    assert frame.state == "approved"
    await b.wait_event("peer_active", device_id=raw.device_id)
