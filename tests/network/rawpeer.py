"""A peer made by hand for tests: its own key, a real `Link` to the broker, and frames sealed
from any bytes, so it can send what no daemon would (NaN, lone surrogates, huge integers), and
read the frames daemons seal to it, so it can answer them as it likes (or not at all)."""

from __future__ import annotations

from typing import Any

import attrs
import nacl.signing
import trio

from meshactors.actors import Node, run_root
from meshactors.network.link import InboundRecords, Link, LinkEvent, LinkOutbound, LinkUp
from meshactors.network.sealing import PeerCrypto
from meshactors.wire.device_id import device_id_from_public_key, public_key_from_device_id
from meshactors.wire.peer import (
    FEATURES,
    PROTOCOL_VERSION,
    Capabilities,
    Frame,
    Hello,
    Profile,
    decode_frame,
    encode_frame,
)
from tests.network.conftest import NET, WAIT, Daemon, Mesh

HEARD_RECORDS = 4096  # sealed records the raw peer holds unread before its link waits


def pending_hello() -> Hello:
    """The plainest hello: of a daemon (version 1.0, no features) that has not approved us."""
    return Hello(
        major=1,
        minor=0,
        features=[],
        label=None,
        app_version="0",
        role="daemon",
        capabilities=Capabilities(),
        profile=Profile(),
        approval="pending",
    )


@attrs.define(eq=False)
class _Heard:
    """The raw peer's link sink: keeps the up link's queue and the records sealed to it."""

    up: trio.Event = attrs.field(factory=trio.Event)
    outbound: LinkOutbound | None = None
    records: tuple[
        trio.MemorySendChannel[tuple[bytes, bytes]], trio.MemoryReceiveChannel[tuple[bytes, bytes]]
    ] = attrs.field(factory=lambda: trio.open_memory_channel[tuple[bytes, bytes]](HEARD_RECORDS))

    async def send(self, event: LinkEvent, /) -> None:
        if isinstance(event, LinkUp):
            self.outbound = event.outbound
            self.up.set()
        elif isinstance(event, InboundRecords):
            for record in event.records:
                await self.records[0].send(record)


@attrs.define(eq=False)
class RawPeer:
    """Joins `network` at a broker and seals whatever bytes a test gives it to one device."""

    network: str
    key: nacl.signing.SigningKey = attrs.field(factory=nacl.signing.SigningKey.generate)
    _heard: _Heard = attrs.field(factory=_Heard)
    _sealers: dict[str, PeerCrypto] = attrs.field(factory=dict)

    @property
    def device_id(self) -> str:
        return device_id_from_public_key(bytes(self.key.verify_key))

    async def join(self, url: str, nursery: trio.Nursery) -> None:
        """Connect to the broker at `url` and wait for its welcome."""
        link = Link(self.network, [url], self.key, self._heard)
        await nursery.start(run_root, link, Node(name="raw peer", kind="link"))
        with trio.fail_after(WAIT):
            await self._heard.up.wait()

    async def hello(self, device_id: str, **fields: Any) -> None:
        """Send `device_id` the hello of a daemon that approved it (fields override)."""
        hello = Hello(
            major=PROTOCOL_VERSION[0],
            minor=PROTOCOL_VERSION[1],
            features=list(FEATURES),
            label="raw",
            app_version="0",
            role="daemon",
            capabilities=Capabilities(),
            profile=Profile(),
            approval="approved",
            answer=False,
        )
        await self.send_frame(device_id, attrs.evolve(hello, **fields))

    async def send_frame(self, device_id: str, frame: Frame) -> None:
        await self.send_raw(device_id, encode_frame(frame))

    async def send_raw(self, device_id: str, data: bytes) -> None:
        """Seal `data` as it is (any bytes) to `device_id` and queue it on the link."""
        assert self._heard.outbound is not None, "join first"
        sealed = self._crypto(device_id).seal(data)
        await self._heard.outbound.send(public_key_from_device_id(device_id), sealed)

    async def receive(self) -> tuple[str, Frame]:
        """The next frame a daemon sealed to this peer, opened and decoded, with its sender."""
        public_key, sealed = await self._heard.records[1].receive()
        sender = device_id_from_public_key(public_key)
        return sender, decode_frame(self._crypto(sender).open(sealed))

    def _crypto(self, device_id: str) -> PeerCrypto:
        crypto = self._sealers.get(device_id)
        if crypto is None:
            crypto = self._sealers[device_id] = PeerCrypto.for_peer(self.key, device_id)
        return crypto


async def approved_raw_peer(
    mesh: Mesh, nursery: trio.Nursery, **options: Any
) -> tuple[Daemon, RawPeer]:
    """A daemon `b` (started with `options`) on NET and a hand-made peer it has approved and
    sees active."""
    b = await mesh.daemon("b", **options)
    await b.join(mesh.url)
    raw = RawPeer(NET)
    await raw.join(mesh.url, nursery)
    await raw.hello(b.device_id)
    await b.call("roster_approve", network=NET, device_id=raw.device_id)
    await b.wait_event("peer_active", device_id=raw.device_id)
    return b, raw
