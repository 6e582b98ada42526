"""A durable send to `*` in a closed network names every member, the offline ones too."""

from __future__ import annotations

from tests.membership.conftest import CLOSED, team
from tests.network.conftest import Mesh


async def test_a_send_to_all_reaches_a_member_offline_when_it_was_sent(mesh: Mesh) -> None:
    """An offline member has no place in the peer table (no roster entry keeps it there), yet
    it is one of `*`: it gets the message once back; an evicted device is none of `*`."""
    owner, on, away, gone = await team(mesh, "owner", "on", "away", "gone")
    await owner.call("members_evict", network=CLOSED, device_id=gone.device_id)
    await away.stop()
    await owner.wait_status(away, "offline")
    sent = await owner.call("send", network=CLOSED, to="*", message="to everyone")
    rows = (await owner.call("outbox_list", network=CLOSED))["rows"]
    (row,) = [row for row in rows if row["id"] == sent["id"]]
    named = {delivery["recipient"] for delivery in row["deliveries"]}
    assert named == {on.device_id, away.device_id}
    back = await mesh.daemon("away")
    got = await back.wait_event("message", client_message_id=sent["client_message_id"])
    assert (got["from"], got["message"]) == (owner.device_id, "to everyone")
    await owner.wait_event("message_delivered", id=sent["id"], recipient=away.device_id)
