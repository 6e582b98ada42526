"""A peer whose status flaps (hellos of two majors in turn, Bye then hello, a broker's joins and
leaves of made-up ids) costs the event stream a burst, then one event per STATUS_EVENT_INTERVAL:
the peer table still shows each change at once, the untold ones are counted, and the latest
status is told once the pace allows, so a follower never ends with a stale one (MockClock)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.identity import Identity
from meshactors.network.link import InboundRecords
from meshactors.network.peers import (
    SILENT_EVENT_BURST,
    STATUS_EVENT_BURST,
    STATUS_EVENT_INTERVAL,
    STATUS_EVENTS,
    Peers,
)
from meshactors.network.sealing import PeerCrypto
from meshactors.wire.broker import PresenceJoin, PresenceLeave
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.peer import Bye, encode_frame
from tests.network.conftest import NET
from tests.network.rawpeer import pending_hello

STATUS_KINDS = frozenset(STATUS_EVENTS.values())


@attrs.define
class StatusRecorder:
    """Stands in for the event hub: keeps the status events the peer table publishes."""

    events: list[tuple[str, str]] = attrs.field(factory=list)  # (kind, device id)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if kind in STATUS_KINDS:
            self.events.append((kind, data["device_id"]))
            self.changed.set()
            self.changed = trio.Event()

    def of(self, device_id: str) -> list[str]:
        """The kinds told of one device, in order."""
        return [kind for kind, told in self.events if told == device_id]


@attrs.define
class FlappingPeer:
    """A device with its own key that hands the peer table frames sealed to it."""

    peers: Peers
    key: SigningKey = attrs.field(factory=SigningKey.generate)
    sealer: PeerCrypto = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.sealer = PeerCrypto.for_peer(self.key, self.peers.identity.device_id)

    @property
    def device_id(self) -> str:
        return device_id_from_public_key(bytes(self.key.verify_key))

    async def send(self, frame: bytes) -> None:
        sealed = self.sealer.seal(frame)
        await self.peers.on_link_event(InboundRecords([(bytes(self.key.verify_key), sealed)]))

    def shown(self) -> dict[str, Any]:
        """This device as peers_list shows it."""
        listed = self.peers.list_peers(include_all=True)
        return next(p for p in listed if p["device_id"] == self.device_id)

    def status(self) -> str:
        return str(self.shown()["status"])

    def frames(self) -> dict[str, int]:
        """Its `frames` figures in peers_list: opened, sealed and dropped by reason."""
        frames: dict[str, int] = self.shown()["frames"]
        return frames


@pytest.fixture
async def paced(nursery: trio.Nursery) -> tuple[Peers, StatusRecorder]:
    """A peer table (no store: nothing here saves) with its retell loop running."""
    recorder = StatusRecorder()
    unused: Any = None
    peers = Peers(NET, Identity(SigningKey.generate()), unused, recorder)
    nursery.start_soon(peers.retell_loop)
    return peers, recorder


async def told(recorder: StatusRecorder, device_id: str, kind: str) -> None:
    """Wait (the clock jumps while all sleep) until the last event of `device_id` is `kind`."""
    with trio.fail_after(10 * STATUS_EVENT_INTERVAL):
        while (recorder.of(device_id) or [None])[-1] != kind:
            await recorder.changed.wait()


async def test_a_peer_flapping_majors_is_told_a_burst_then_its_latest_status(
    paced: tuple[Peers, StatusRecorder], autojump_clock: trio.testing.MockClock
) -> None:
    peers, recorder = paced
    peer = FlappingPeer(peers)
    future = {**json.loads(encode_frame(pending_hello())), "major": 99}
    skewed, ours = json.dumps(future).encode(), encode_frame(pending_hello())
    await peers.on_link_event(PresenceJoin(peer.device_id, "daemon"))
    for _ in range(100):
        await peer.send(skewed)
        await peer.send(ours)
    await peer.send(skewed)  # the latest: incompatible, while the pace holds its event back
    assert peer.status() == "incompatible"  # each change is the table's at once
    assert len(recorder.of(peer.device_id)) == 1 + STATUS_EVENT_BURST  # peer_sighted, the burst
    # past the burst (told pending last), each turn to incompatible is held back and each turn
    # back to pending undoes it: only the former count as untold
    untold = (201 - STATUS_EVENT_BURST + 1) // 2
    assert peers.figures()["dropped"]["status_untold"] == untold
    assert "status_untold" not in peer.frames()  # events the network held, not frames
    await told(recorder, peer.device_id, "peer_incompatible")
    assert len(recorder.of(peer.device_id)) == 1 + STATUS_EVENT_BURST + 1  # and the latest


async def test_a_peer_saying_bye_and_hello_ends_told_as_peers_list_shows_it(
    paced: tuple[Peers, StatusRecorder], autojump_clock: trio.testing.MockClock
) -> None:
    peers, recorder = paced
    peer = FlappingPeer(peers)
    await peers.on_link_event(PresenceJoin(peer.device_id, "daemon"))
    hello, bye = encode_frame(pending_hello()), encode_frame(Bye("again"))
    for _ in range(100):
        await peer.send(hello)
        await peer.send(bye)
    assert peer.status() == "offline"
    await told(recorder, peer.device_id, "peer_left")
    assert len(recorder.of(peer.device_id)) <= 1 + STATUS_EVENT_BURST + 1
    await trio.sleep(STATUS_EVENT_INTERVAL)  # the clock jumps: the pace holds a token again
    await peer.send(hello)  # and a change is told at once
    assert recorder.of(peer.device_id)[-1] == "peer_pending" == f"peer_{peer.status()}"


async def test_made_up_joins_and_leaves_are_told_at_the_networks_pace(
    paced: tuple[Peers, StatusRecorder], autojump_clock: trio.testing.MockClock
) -> None:
    peers, recorder = paced
    for _ in range(500):
        device_id = device_id_from_public_key(bytes(SigningKey.generate().verify_key))
        await peers.on_link_event(PresenceJoin(device_id, "daemon"))
        await peers.on_link_event(PresenceLeave(device_id))
    sighted = [device for kind, device in recorder.events if kind == "peer_sighted"]
    left = [device for kind, device in recorder.events if kind == "peer_left"]
    assert len(recorder.events) <= SILENT_EVENT_BURST + 1  # a sighted told, its left owed
    assert left == sighted  # each device told present is told gone: none left stale
    assert peers.list_peers(include_all=True) == []


async def test_a_change_undone_within_its_hold_counts_once(
    paced: tuple[Peers, StatusRecorder], autojump_clock: trio.testing.MockClock
) -> None:
    peers, recorder = paced
    peer = FlappingPeer(peers)
    future = {**json.loads(encode_frame(pending_hello())), "major": 99}
    skewed, ours = json.dumps(future).encode(), encode_frame(pending_hello())
    await peers.on_link_event(PresenceJoin(peer.device_id, "daemon"))
    for _ in range(STATUS_EVENT_BURST // 2):  # its pace spent: told pending last
        await peer.send(skewed)
        await peer.send(ours)
    await peer.send(skewed)  # held back: one change untold
    await peer.send(ours)  # back to the status told: nothing more untold, nothing to retell
    assert peers.figures()["dropped"]["status_untold"] == 1
    await trio.sleep(2 * STATUS_EVENT_INTERVAL)
    assert recorder.of(peer.device_id)[-1] == "peer_pending"
    assert len(recorder.of(peer.device_id)) == 1 + STATUS_EVENT_BURST


def silent_ids(count: int) -> list[str]:
    """Made-up device ids, lowest first."""
    keys = (SigningKey.generate().verify_key for _ in range(count))
    return sorted(device_id_from_public_key(bytes(key)) for key in keys)


async def test_silent_devices_held_back_are_told_first_held_first(
    paced: tuple[Peers, StatusRecorder], autojump_clock: trio.testing.MockClock
) -> None:
    peers, recorder = paced
    *later, first = silent_ids(SILENT_EVENT_BURST + 21)
    for device_id in later[:SILENT_EVENT_BURST]:  # the pace spent
        await peers.on_link_event(PresenceJoin(device_id, "daemon"))
    held = [first, *later[SILENT_EVENT_BURST:]]  # the highest id held first, then lower ones
    for device_id in held:
        await peers.on_link_event(PresenceJoin(device_id, "daemon"))
    assert len(recorder.events) == SILENT_EVENT_BURST
    with trio.fail_after((len(held) + 1) * STATUS_EVENT_INTERVAL):
        while len(recorder.events) < SILENT_EVENT_BURST + len(held):
            await recorder.changed.wait()
    retold = [device for _, device in recorder.events[SILENT_EVENT_BURST:]]
    assert retold == held  # each in its turn: none passed over for a lower id
