"""A peer cannot flood the event log with capability and profile changes: those of a device we
denied, or that a closed network keeps out, are dropped unread; an approved one's are kept in its
state at once but told at a pace, DETAIL_EVENT_BURST then one per DETAIL_EVENT_INTERVAL, the
latest of each kind once the pace allows (MockClock; the peer table driven directly, as
tests/network/test_status_flaps.py does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.identity import Identity
from meshactors.network.peers import (
    DETAIL_EVENT_BURST,
    DETAIL_EVENT_INTERVAL,
    DETAILS_UNTOLD,
    FROM_DENIED,
    REJECTED_NON_MEMBER,
    Peers,
)
from meshactors.wire.broker import PresenceJoin, PresenceLeave
from meshactors.wire.peer import Capabilities, Caps, Profile, ProfileFrame, encode_frame
from tests.network.conftest import NET
from tests.network.rawpeer import pending_hello
from tests.network.test_status_flaps import FlappingPeer

DETAIL_KINDS = frozenset({"peer_capabilities", "peer_profile"})


@attrs.define
class DetailRecorder:
    """Stands in for the event hub: keeps the capability and profile events published."""

    events: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if kind in DETAIL_KINDS:
            self.events.append((kind, data))
            self.changed.set()
            self.changed = trio.Event()

    def of(self, device_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The events told of one device, in order."""
        return [(kind, data) for kind, data in self.events if data["device_id"] == device_id]

    async def wait_for(self, count: int) -> None:
        """Wait (the clock jumps while all sleep) until `count` events are told."""
        with trio.fail_after(10 * DETAIL_EVENT_INTERVAL):
            while len(self.events) < count:
                await self.changed.wait()


class SavesNothing:
    """Stands in for the store actor: the roster changes here need no database."""

    async def call(self, fn: Callable[..., Any], *, what: str) -> None:
        """Save nothing."""


@attrs.define
class ShutGate:
    """A closed network's membership that holds no one but us."""

    @property
    def closed(self) -> bool:
        return True

    def approval(self, device_id: str) -> str:
        return "denied"

    async def on_handshake(self, device_id: str) -> None:
        """Nothing to compare."""

    def summary(self) -> dict[str, Any]:
        return {}

    def approved(self) -> list[str]:
        return []

    def undeliverable(self) -> frozenset[str] | None:
        return frozenset()


def _table() -> tuple[Peers, DetailRecorder]:
    recorder = DetailRecorder()
    store: Any = SavesNothing()
    return Peers(NET, Identity(SigningKey.generate()), store, recorder), recorder


async def _handshaken(peers: Peers) -> FlappingPeer:
    peer = FlappingPeer(peers)
    await peers.on_link_event(PresenceJoin(peer.device_id, "daemon"))
    await peer.send(encode_frame(pending_hello()))
    return peer


async def _flood(peer: FlappingPeer, count: int) -> None:
    """`count` capability changes and as many profile changes."""
    for n in range(count):
        await peer.send(encode_frame(Caps(Capabilities(max_connections=n + 1))))
        await peer.send(encode_frame(ProfileFrame(Profile(summary=str(n)))))


def _shown(peers: Peers, peer: FlappingPeer) -> dict[str, Any]:
    return next(p for p in peers.list_peers(include_all=True) if p["device_id"] == peer.device_id)


async def test_a_denied_peers_changes_are_dropped_unread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers, recorder = _table()
    peer = await _handshaken(peers)
    await peers.deny(peer.device_id)
    await _flood(peer, 50)
    assert recorder.kinds == []
    assert peers.figures()["dropped"][FROM_DENIED] == 100
    assert _shown(peers, peer)["capabilities"]["max_connections"] == 0


async def test_a_closed_networks_non_member_changes_are_dropped_unread(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers, recorder = _table()
    peers.gate = ShutGate()
    peer = await _handshaken(peers)
    await _flood(peer, 50)
    assert recorder.kinds == []
    assert _shown(peers, peer)["frames"][REJECTED_NON_MEMBER] == 1 + 100  # its hello too


def _latest(recorder: DetailRecorder, peer: FlappingPeer) -> list[tuple[str, object]]:
    """The events told of `peer` past its burst, by kind and the value they carry."""
    return [
        (kind, data["capabilities"]["max_connections"])
        if kind == "peer_capabilities"
        else (kind, data["profile"]["summary"])
        for kind, data in recorder.of(peer.device_id)[DETAIL_EVENT_BURST:]
    ]


async def test_a_peer_changing_its_advert_over_and_over_is_told_at_a_pace_then_its_latest(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peers, recorder = _table()
    nursery.start_soon(peers.retell_loop)
    peer = await _handshaken(peers)
    await peers.approve(peer.device_id, None)
    await _flood(peer, 1000)
    assert len(recorder.kinds) == DETAIL_EVENT_BURST
    # past the burst each kind is held; every change after the first held replaces one untold
    assert peers.figures()["dropped"][DETAILS_UNTOLD] == 2000 - DETAIL_EVENT_BURST - 2
    shown = _shown(peers, peer)  # the latest is the table's at once
    assert DETAILS_UNTOLD not in shown["frames"]  # events the network held, not frames
    assert shown["capabilities"]["max_connections"] == 1000
    assert shown["profile"]["summary"] == "999"
    await recorder.wait_for(DETAIL_EVENT_BURST + 2)  # once the pace allows: the latest of each
    assert _latest(recorder, peer) == [("peer_capabilities", 1000), ("peer_profile", "999")]
    await trio.sleep(10 * DETAIL_EVENT_INTERVAL)  # the intermediate ones stay merged
    assert len(recorder.kinds) == DETAIL_EVENT_BURST + 2
    await _flood(peer, 1)  # the pace holds tokens again: told at once
    assert _latest(recorder, peer)[2:] == [("peer_capabilities", 1), ("peer_profile", "0")]
    assert peers.figures()["dropped"][DETAILS_UNTOLD] == 2000 - DETAIL_EVENT_BURST - 2


async def test_a_held_change_is_told_with_the_value_the_peer_has_when_the_pace_allows(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peers, recorder = _table()
    nursery.start_soon(peers.retell_loop)
    peer = await _handshaken(peers)
    await peers.approve(peer.device_id, None)
    for n in range(DETAIL_EVENT_BURST + 1):  # the last held back
        await peer.send(encode_frame(Caps(Capabilities(max_connections=n + 1))))
    assert peers.figures()["dropped"].get(DETAILS_UNTOLD, 0) == 0  # held, not lost
    await trio.sleep(DETAIL_EVENT_INTERVAL / 4)  # still held: a later change replaces it
    await peer.send(encode_frame(Caps(Capabilities(max_connections=99))))
    await recorder.wait_for(DETAIL_EVENT_BURST + 1)
    assert _latest(recorder, peer) == [("peer_capabilities", 99)]
    assert peers.figures()["dropped"][DETAILS_UNTOLD] == 1


async def test_a_peer_that_leaves_the_table_has_nothing_retold(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    peers, recorder = _table()
    nursery.start_soon(peers.retell_loop)
    leaving, staying = await _handshaken(peers), await _handshaken(peers)
    await _flood(leaving, 100)
    await _flood(staying, 100)
    await peers.on_link_event(PresenceLeave(leaving.device_id))
    await peers.forget(leaving.device_id)  # gone, and no roster entry: it leaves the table
    assert [p["device_id"] for p in peers.list_peers(include_all=True)] == [staying.device_id]
    await recorder.wait_for(2 * DETAIL_EVENT_BURST + 2)  # the one still there: its latest
    await trio.sleep(10 * DETAIL_EVENT_INTERVAL)
    assert len(recorder.of(leaving.device_id)) == DETAIL_EVENT_BURST
    assert _latest(recorder, staying) == [("peer_capabilities", 100), ("peer_profile", "99")]
    # the one that left: its held changes are never told now
    assert peers.figures()["dropped"][DETAILS_UNTOLD] == 2 * (200 - DETAIL_EVENT_BURST) - 2
