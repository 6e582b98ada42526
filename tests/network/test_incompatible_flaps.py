"""A peer that keeps turning incompatible (a hello of another major, then one of ours, again
and again) costs the event stream one `peer_incompatible` per INCOMPATIBLE_EVENT_INTERVAL at
most: the peer table still shows each change, and the untold ones are counted (MockClock)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.identity import Identity
from meshactors.network.link import InboundRecords
from meshactors.network.peers import INCOMPATIBLE_EVENT_INTERVAL, Peers
from meshactors.network.sealing import PeerCrypto
from meshactors.wire.broker import PresenceJoin
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.peer import encode_frame
from tests.network.conftest import NET
from tests.network.rawpeer import pending_hello


@attrs.define
class EventRecorder:
    """Stands in for the event hub: keeps the kinds of what the peer table publishes."""

    kinds: list[str] = attrs.field(factory=list)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.kinds.append(kind)


async def test_a_peer_flapping_to_incompatible_is_told_once_per_interval(
    mock_clock: trio.testing.MockClock,
) -> None:
    recorder = EventRecorder()
    unused: Any = None  # no store: nothing here saves
    peers = Peers(NET, Identity(SigningKey.generate()), unused, recorder)
    key = SigningKey.generate()
    sealer = PeerCrypto.for_peer(key, peers.identity.device_id)
    future = {**json.loads(encode_frame(pending_hello())), "major": 99}
    skewed, ours = json.dumps(future).encode(), encode_frame(pending_hello())

    async def flap(times: int) -> None:
        for _ in range(times):
            for frame in (skewed, ours):
                sealed = sealer.seal(frame)
                await peers.on_link_event(InboundRecords([(bytes(key.verify_key), sealed)]))

    device_id = device_id_from_public_key(bytes(key.verify_key))
    await peers.on_link_event(PresenceJoin(device_id, "daemon"))
    await flap(100)
    assert recorder.kinds.count("peer_incompatible") == 1
    assert peers.figures()["dropped"]["incompatible_untold"] == 99
    (shown,) = peers.list_peers(include_all=True)
    assert shown["status"] == "pending"  # each change is still the table's
    mock_clock.jump(INCOMPATIBLE_EVENT_INTERVAL)
    await flap(1)
    assert recorder.kinds.count("peer_incompatible") == 2
