"""`meshactors members …` naming devices as people type them, against real daemons."""

from __future__ import annotations

from tests.membership.conftest import CLOSED, invite_used_up, members, run_cli, team
from tests.network.conftest import Mesh


async def test_an_offline_member_is_evicted_by_the_prefix_peers_printed(mesh: Mesh) -> None:
    owner, laptop = await team(mesh, "owner", "laptop")
    await laptop.stop()
    await owner.wait_event("peer_left", network=CLOSED, device_id=laptop.device_id)
    assert await owner.peer(laptop, CLOSED) is None  # a closed network keeps no roster entry
    done = await run_cli(owner, "members", "evict", laptop.device_id[:12], "-n", CLOSED)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"{laptop.device_id[:12]} in {CLOSED}: evicted, role -\n"
    assert (await members(owner))[laptop.device_id][1] == "evicted"


async def test_an_invite_refused_as_used_up_shows_in_network_list_and_daemon_status(
    mesh: Mesh,
) -> None:
    owner, second, _ = await invite_used_up(mesh)
    note = f"invite refused by {owner.device_id[:12]}: the invite was used up"
    listed = await run_cli(second, "network", "list")
    (row,) = listed.stdout.decode().splitlines()[1:]
    assert row.split()[0] == CLOSED and row.endswith(note)
    status = (await run_cli(second, "daemon", "status")).stdout.decode()
    assert f"networks   {CLOSED} (" in status and f", {note})\n" in status
