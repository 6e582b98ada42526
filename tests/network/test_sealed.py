"""A hand-driven peer on a real broker: altered and replayed sealed frames are dropped and
counted, and a peer of another protocol major is reported incompatible, never silently."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from nacl.signing import SigningKey
from trio_websocket import WebSocketConnection, open_websocket_url

from meshactors.network.sealing import PeerCrypto
from meshactors.wire.broker import build_hello, decode_batch, encode_batch
from meshactors.wire.device_id import public_key_from_device_id
from meshactors.wire.peer import (
    Capabilities,
    Frame,
    Hello,
    Ping,
    Pong,
    Profile,
    decode_frame,
    encode_frame,
)
from tests.network.conftest import NET, WAIT, Daemon, Mesh


@attrs.define
class BareWebSocketPeer:
    """A peer that seals frames itself, so a test can replay or alter them on the way."""

    ws: WebSocketConnection
    crypto: PeerCrypto
    to: bytes

    def seal(self, frame: Frame) -> bytes:
        return self.crypto.seal(encode_frame(frame))

    async def send(self, *sealed: bytes) -> None:
        await self.ws.send_message(encode_batch([(self.to, item) for item in sealed]))

    async def receive(self, kind: type[Frame]) -> Frame:
        """The next frame of type `kind` from the daemon (skipping notices and others)."""
        with trio.fail_after(WAIT):
            while True:
                message = await self.ws.get_message()
                if isinstance(message, str):
                    continue
                for _, sealed in decode_batch(message):
                    frame = decode_frame(self.crypto.open(sealed))
                    if isinstance(frame, kind):
                        return frame


@asynccontextmanager
async def bare_websocket_peer(mesh: Mesh, daemon: Daemon) -> AsyncIterator[BareWebSocketPeer]:
    key = SigningKey.generate()
    async with open_websocket_url(mesh.url) as ws:
        await ws.send_message(build_hello(key, NET, "daemon", now_ms=time.time_ns() // 10**6))
        welcome = json.loads(await ws.get_message())
        assert welcome["type"] == "welcome"
        to = public_key_from_device_id(daemon.device_id)
        yield BareWebSocketPeer(ws, PeerCrypto.for_peer(key, daemon.device_id), to)


def hello(major: int = 1) -> Hello:
    return Hello(
        major=major,
        minor=0,
        features=[],
        label="raw",
        app_version="0",
        role="daemon",
        capabilities=Capabilities(),
        profile=Profile(),
        approval="pending",
    )


async def test_replayed_and_altered_frames_are_dropped_and_counted(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    await a.wait_event("network_phase", phase="alone")
    async with bare_websocket_peer(mesh, a) as peer:
        first = peer.seal(hello())
        altered = bytearray(peer.seal(Ping(1)))
        altered[-1] ^= 0x01
        await peer.send(first, first, bytes(altered), peer.seal(Ping(7)))
        pong = await peer.receive(Pong)  # a answered the last frame: it read the others
        assert pong == Pong(7)
        listed = (await a.call("peers_list", network=NET, all=True))["peers"]
        (seen,) = listed
        assert seen["status"] == "pending"
        assert (seen["frames"]["replayed"], seen["frames"]["tampered"]) == (1, 1)
        assert seen["frames"]["opened"] == 2
        figures = a.network().peers.figures()["dropped"]
        assert figures == {"replayed": 1, "tampered": 1}


async def test_a_peer_of_another_major_is_incompatible_with_the_reason(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    await a.wait_event("network_phase", phase="alone")
    async with bare_websocket_peer(mesh, a) as peer:
        future = {**json.loads(encode_frame(hello())), "major": 2, "minor": 3, "new": [1]}
        await peer.send(peer.crypto.seal(json.dumps(future).encode()))
        answer = await peer.receive(Hello)  # we still tell it who we are
        assert isinstance(answer, Hello) and answer.major == 1
        event = await a.wait_event("peer_incompatible")
        assert event["reason"] == "peer speaks protocol 2.3, we speak 1.0"
        (seen,) = (await a.call("peers_list", network=NET, all=True))["peers"]
        assert (seen["status"], seen["incompatible"]) == ("incompatible", event["reason"])
