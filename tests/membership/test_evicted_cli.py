"""What an evicted device's operator reads in the plain-text commands: who evicted it, when."""

from __future__ import annotations

import datetime

from tests.membership.conftest import CLOSED, run_cli, team
from tests.network.conftest import Daemon, Mesh


async def cli(daemon: Daemon, *args: str) -> str:
    """`meshactors ARGS…` against `daemon`, in a process of its own; its stdout (exit 0)."""
    done = await run_cli(daemon, *args)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_network_list_and_daemon_status_say_who_evicted_this_device_when(
    mesh: Mesh,
) -> None:
    owner, target = await team(mesh, "owner", "target")
    await owner.call("members_evict", network=CLOSED, device_id=target.device_id)
    evicted = await target.wait_event("evicted", network=CLOSED)
    at = datetime.datetime.fromtimestamp(evicted["at"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
    note = f"evicted by {owner.device_id[:12]} at {at}"
    (row,) = (await cli(target, "network", "list")).splitlines()[1:]
    assert row.split()[:2] == [CLOSED, "stopped"] and row.endswith(note)
    assert f"networks   {CLOSED} (stopped, {note})\n" in await cli(target, "daemon", "status")
    assert "evicted" not in await cli(owner, "network", "list")
