"""What keeps a big network cheap: auto-approvals saved in batches (and still ordered with the
operator's own roster changes), and rtt probes paced per network rather than per peer."""

from __future__ import annotations

import contextlib
import sqlite3

from meshactors.network.peers import PEER_PING_INTERVAL, PING_RATE, ping_gap
from tests.network.conftest import NET, Daemon, Mesh


def _saved_roster(daemon: Daemon) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(daemon.home / "state.db")) as conn:
        rows = conn.execute("SELECT device_id, state FROM roster WHERE network = ?", (NET,))
        return dict(rows.fetchall())


async def test_auto_approvals_reach_the_database(mesh: Mesh) -> None:
    a, b, c = await mesh.daemon("a"), await mesh.daemon("b"), await mesh.daemon("c")
    for daemon in (a, b, c):
        await daemon.join(mesh.url, auto_approve=True)
    await a.wait_status(b, "active")
    await a.wait_status(c, "active")
    await a.stop()
    assert _saved_roster(a) == {b.device_id: "approved", c.device_id: "approved"}


async def test_a_deny_after_an_auto_approval_is_what_is_saved(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url, auto_approve=True)
    await b.join(mesh.url, auto_approve=True)
    await a.wait_event("peer_approved", device_id=b.device_id, auto=True)
    await a.call("roster_deny", network=NET, device_id=b.device_id)
    await a.stop()
    assert _saved_roster(a) == {b.device_id: "denied"}


def test_probes_stay_under_the_rate_however_many_peers() -> None:
    for peers in (1, 2, 10, 15, 16, 200, 1024):
        gap = ping_gap(peers)
        assert gap >= 1.0 / PING_RATE  # the network's probes per second stay bounded
        assert gap * peers >= PEER_PING_INTERVAL  # no peer is probed more often than that
    assert ping_gap(10) * 10 == PEER_PING_INTERVAL  # a small network keeps its interval
    assert ping_gap(0) == PEER_PING_INTERVAL
