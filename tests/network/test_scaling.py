"""What keeps a big network cheap: auto-approvals saved in batches (and still ordered with the
operator's own roster changes), and rtt probes paced per network rather than per peer.

For the probes the core actor runs for real (store, events, sealed hellos) with a link that is
not up, so each probe it sends is counted as `link_down`; the clock is a MockClock moved by
hand."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.network.core import NetworkCore
from meshactors.network.link import InboundRecords
from meshactors.network.peers import PEER_PING_INTERVAL, PING_RATE, Peers
from meshactors.network.sealing import PeerCrypto
from meshactors.store import networks as roster_db
from meshactors.store.actor import StoreActor
from meshactors.wire.broker import PresenceJoin
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.peer import encode_frame
from tests.network.conftest import NET, Daemon, Mesh
from tests.network.rawpeer import pending_hello


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


WINDOW = 60  # simulated seconds over which probes are counted


async def _probes_in_window(tmp_path: Path, clock: trio.testing.MockClock, handshaken: int) -> int:
    """Probes the core actor sends in WINDOW seconds once `handshaken` peers said hello."""
    identity = Identity(SigningKey.generate())
    store = StoreActor(tmp_path / "state.db")
    peers = Peers(NET, identity, store, EventHub(store), auto_approve=True)
    core = NetworkCore(peers)

    async def list_all() -> list[dict[str, Any]]:
        return peers.list_peers(include_all=True)

    tree = Supervisor(children=[ChildSpec("store", store), ChildSpec("core", core)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        save = functools.partial(roster_db.save_network, network_id=NET, config={}, now_ms=0)
        await store.call(save, what="save network")
        for _ in range(handshaken):
            key = SigningKey.generate()
            device_id = device_id_from_public_key(bytes(key.verify_key))
            sealed = PeerCrypto.for_peer(key, identity.device_id).seal(
                encode_frame(pending_hello())
            )
            await core.inbox.send(PresenceJoin(device_id, "daemon"))
            await core.inbox.send(InboundRecords([(bytes(key.verify_key), sealed)]))
        for _ in range(10_000):  # an ask goes ahead of the traffic: ask until core read it
            listed = await core.ask(list_all, "list peers")
            if [p["status"] for p in listed] == ["pending"] * handshaken:  # hellos read
                break
            await trio.testing.wait_all_tasks_blocked()
        else:
            raise AssertionError(f"core read {len(listed)} of {handshaken} hellos")
        clock.jump(PEER_PING_INTERVAL)  # the loop's first look found no peer yet
        await trio.testing.wait_all_tasks_blocked()
        before = peers.dropped["link_down"]
        for _ in range(WINDOW):
            clock.jump(1.0)
            await trio.testing.wait_all_tasks_blocked()
        probes = peers.dropped["link_down"] - before
        nursery.cancel_scope.cancel()
    return probes


@pytest.mark.parametrize("handshaken", [200, 1000])
async def test_a_big_network_probes_at_ping_rate(
    tmp_path: Path, mock_clock: trio.testing.MockClock, handshaken: int
) -> None:
    probes = await _probes_in_window(tmp_path, mock_clock, handshaken)
    assert WINDOW * PING_RATE - 1 <= probes <= WINDOW * PING_RATE + 1  # not 1 per peer / 15 s


async def test_a_small_network_probes_each_peer_every_interval(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    probes = await _probes_in_window(tmp_path, mock_clock, 5)
    assert probes == 5 * WINDOW / PEER_PING_INTERVAL
