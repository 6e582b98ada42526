"""A broker that relays junk from made-up keys (bytes that do not open, or open to no frame)
fills no place in the peer table: a sender enters it only once a frame of its own opened and
decoded, so a real device that comes after still gets in."""

from __future__ import annotations

import json
import os

import pytest
import trio
from nacl.signing import SigningKey
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from meshactors.network import peers as peers_module
from meshactors.network.sealing import PeerCrypto
from meshactors.wire.broker import encode_batch
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.peer import Capabilities, Hello, Profile, encode_frame
from tests.network.appclient import network_children
from tests.network.conftest import NET, Mesh

JUNK_SENDERS = 12  # made-up keys, each sending one record of each kind of junk
JUNK_TABLE = 4  # the peer table's size in these tests: far fewer places than junk senders


def _hello() -> Hello:
    return Hello(
        major=1,
        minor=0,
        features=[],
        label="late",
        app_version="0",
        role="daemon",
        capabilities=Capabilities(),
        profile=Profile(),
        approval="pending",
    )


def _junk(daemon_id: str) -> list[tuple[bytes, bytes]]:
    """Records from made-up keys: random bytes (`tampered`) and JSON that is no frame, sealed
    properly (`malformed`)."""
    records = []
    for _ in range(JUNK_SENDERS):
        key = SigningKey.generate()
        sender = bytes(key.verify_key)
        records.append((sender, os.urandom(80)))
        records.append((sender, PeerCrypto.for_peer(key, daemon_id).seal(b'{"t": 1}')))
    return records


async def test_junk_from_made_up_keys_takes_no_place_in_the_table(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers_module, "MAX_PEERS", JUNK_TABLE)
    late = SigningKey.generate()
    late_id = device_id_from_public_key(bytes(late.verify_key))

    async def hostile_broker(request: WebSocketRequest) -> None:
        """Welcomes the daemon, relays it the junk, then a real device's hello."""
        ws = await request.accept()
        daemon_id = json.loads(await ws.get_message())["device_id"]
        await ws.send_message(json.dumps({"type": "welcome", "v": 1, "peers": []}))
        await ws.send_message(encode_batch(_junk(daemon_id)))
        sealed = PeerCrypto.for_peer(late, daemon_id).seal(encode_frame(_hello()))
        await ws.send_message(encode_batch([(bytes(late.verify_key), sealed)]))
        try:
            while True:
                await ws.get_message()  # what the daemon answers, unread
        except ConnectionClosed:
            pass

    server = await nursery.start(serve_websocket, hostile_broker, "127.0.0.1", 0, None)
    a = await mesh.daemon("a")
    await a.join(f"ws://127.0.0.1:{server.port}/v1")
    await a.wait_event("peer_pending", device_id=late_id)  # read after the junk
    peers = (await a.call("peers_list", network=NET, all=True))["peers"]
    assert [p["device_id"] for p in peers] == [late_id]
    figures = network_children(await a.call("inspect"), NET)["core"]["figures"]
    dropped = figures["dropped"]
    assert (dropped["tampered"], dropped["malformed"]) == (JUNK_SENDERS, JUNK_SENDERS)
    assert figures["rejected_frames"] == 2 * JUNK_SENDERS
    assert "table_full" not in dropped
    assert not [e for e in a.events if e["kind"] == "peer_frame_rejected"]
