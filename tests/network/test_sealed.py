"""A hand-driven peer on a real broker: altered and replayed sealed frames are dropped and
counted, and a peer of another protocol major is reported incompatible, never silently."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
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
async def bare_websocket_peer(
    mesh: Mesh, daemon: Daemon, key: SigningKey | None = None, crypto: PeerCrypto | None = None
) -> AsyncIterator[BareWebSocketPeer]:
    """A bare peer at the broker: a new key, or `key` again (a device coming back) sealing
    under `crypto` (the session it kept) or a new session."""
    key = key or SigningKey.generate()
    async with open_websocket_url(mesh.url) as ws:
        await ws.send_message(build_hello(key, NET, "daemon", now_ms=time.time_ns() // 10**6))
        welcome = json.loads(await ws.get_message())
        assert welcome["type"] == "welcome"
        to = public_key_from_device_id(daemon.device_id)
        yield BareWebSocketPeer(ws, crypto or PeerCrypto.for_peer(key, daemon.device_id), to)


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


@pytest.mark.parametrize(
    ("major", "minor", "shown"),
    [
        (2, 3, "2.3"),
        # a hostile version: terminal control codes, 200,000 characters, a 1,000-item list
        ("\x1b]0;pwned\x07\x1b[31m" + "M" * 200_000, [1] * 1000, "?.?"),
    ],
    ids=["future", "hostile"],
)
async def test_a_peer_of_another_major_is_incompatible_with_the_reason(
    mesh: Mesh, major: object, minor: object, shown: str
) -> None:
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    await a.wait_event("network_phase", phase="alone")
    async with bare_websocket_peer(mesh, a) as peer:
        future = {**json.loads(encode_frame(hello())), "major": major, "minor": minor, "new": [1]}
        await peer.send(peer.crypto.seal(json.dumps(future).encode()))
        answer = await peer.receive(Hello)  # we still tell it who we are
        assert isinstance(answer, Hello) and answer.major == 1
        event = await a.wait_event("peer_incompatible")
        assert event["reason"] == f"peer speaks protocol {shown}, we speak 1.0"
        (seen,) = (await a.call("peers_list", network=NET, all=True))["peers"]
        assert (seen["status"], seen["incompatible"]) == ("incompatible", event["reason"])


async def _peer_state_recreated(mesh: Mesh, a: Daemon, how: str) -> None:
    """Have `a` let go of its peer table's state for the (absent) bare peer and build it anew:
    roster_remove drops an absent peer (as a leave drops one no roster keeps: every member of
    a closed network); a crash of core or of the networks supervisor builds a fresh table."""
    if how == "roster_remove":
        (seen,) = (await a.call("peers_list", network=NET, all=True))["peers"]
        await a.wait_event("peer_left", device_id=seen["device_id"])
        await a.call("roster_remove", network=NET, device_id=seen["device_id"])
        assert (await a.call("peers_list", network=NET, all=True))["peers"] == []
        return
    path = {
        "core_crash": f"daemon/networks/network {NET}/core",
        "networks_crash": "daemon/networks",
    }
    mark, restarts = a.last_event_id, a.services.tree.children["control"].restarts
    with contextlib.suppress(EOFError):  # a networks crash restarts control: it may not answer
        await a.call("debug_crash", path=path[how])
    if how == "networks_crash":
        await mesh.reconnect(a, restarts)
    await a.wait_event("network_phase", after=mark, phase="alone")


@pytest.mark.parametrize("how", ["roster_remove", "core_crash", "networks_crash"])
@pytest.mark.parametrize("session", ["kept", "new"])
async def test_frames_a_recreated_peer_state_was_given_before_are_still_replays(
    mesh: Mesh, how: str, session: str
) -> None:
    """When the peer table lets a peer go and builds its state anew, the broker cannot hand
    it that peer's earlier frames again: of the session the peer still seals under (it kept
    its state for us) or of one it has since left (it started a new one)."""
    a = await mesh.daemon("a", debug_ops=True)
    await a.join(mesh.url)
    await a.wait_event("network_phase", phase="alone")
    key = SigningKey.generate()
    crypto = PeerCrypto.for_peer(key, a.device_id)
    async with bare_websocket_peer(mesh, a, key, crypto) as peer:
        captured = [peer.seal(hello()), peer.seal(Ping(1))]
        await peer.send(*captured)
        assert await peer.receive(Pong) == Pong(1)
    await _peer_state_recreated(mesh, a, how)
    kept = crypto if session == "kept" else None
    async with bare_websocket_peer(mesh, a, key, kept) as peer:
        await peer.send(*captured, peer.seal(hello()), peer.seal(Ping(7)))
        assert await peer.receive(Pong) == Pong(7)  # a answered the last frame, not the replay
        (seen,) = (await a.call("peers_list", network=NET, all=True))["peers"]
        assert seen["frames"]["replayed"] == 2
        assert a.network().peers.figures()["dropped"]["replayed"] == 2
