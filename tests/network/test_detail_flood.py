"""A peer cannot flood the event log with capability and profile changes: those of a device we
denied, or that a closed network keeps out, are dropped unread; an approved one's are kept in its
state at once but told at a pace, DETAIL_EVENT_BURST then one per DETAIL_EVENT_INTERVAL
(MockClock; the peer table driven directly, as tests/network/test_status_flaps.py does)."""

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
from meshactors.wire.broker import PresenceJoin
from meshactors.wire.peer import Capabilities, Caps, Profile, ProfileFrame, encode_frame
from tests.network.conftest import NET
from tests.network.rawpeer import pending_hello
from tests.network.test_status_flaps import FlappingPeer

DETAIL_KINDS = frozenset({"peer_capabilities", "peer_profile"})


@attrs.define
class DetailRecorder:
    """Stands in for the event hub: keeps the capability and profile events published."""

    kinds: list[str] = attrs.field(factory=list)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if kind in DETAIL_KINDS:
            self.kinds.append(kind)


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


async def test_a_peer_changing_its_advert_over_and_over_is_told_at_a_pace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers, recorder = _table()
    peer = await _handshaken(peers)
    await peers.approve(peer.device_id, None)
    await _flood(peer, 1000)
    assert len(recorder.kinds) == DETAIL_EVENT_BURST
    assert peers.figures()["dropped"][DETAILS_UNTOLD] == 2000 - DETAIL_EVENT_BURST
    shown = _shown(peers, peer)  # the latest is the table's at once
    assert shown["capabilities"]["max_connections"] == 1000
    assert shown["profile"]["summary"] == "999"
    await trio.sleep(DETAIL_EVENT_INTERVAL)
    await _flood(peer, 1)
    assert recorder.kinds[DETAIL_EVENT_BURST:] == ["peer_capabilities"]
