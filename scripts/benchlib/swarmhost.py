"""One swarm host process: many in-process daemons (scripts/benchlib/swarm.py) driven by JSON
lines on stdin, one JSON answer line on stdout per command (scripts/benchlib/swarmscale.py
starts several and drives them together). Commands:

    {"op": "start", "indices": [i, …]}             → {"devices": […], "sockets": […]}
    {"op": "join", "networks": […], "url": URL}     → {} (auto-approving, not waiting)
    {"op": "formed", "networks": […], "peers": N, "timeout": S}
                                                    → {"formed": bool, "sessions": n}
    {"op": "advert", "network": ID, "sender": DEVICE, "tag": T, "timeout": S}
                                                    → {"seen": bool}

    python -m scripts.benchlib.swarmhost ROOT SIZE
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.actors import Lagged
from meshactors.logs import configure_logging
from meshactors.network.config import NetworkConfig
from meshactors.network.peers import CAPABILITIES_KEY
from meshactors.store import networks as network_db
from meshactors.wire.peer import Capabilities, converter
from scripts.benchlib import swarm

MAX_COMMAND_BYTES = 1 << 20  # one command line from the coordinator
LEAVING = frozenset({"peer_left", "peer_pending", "peer_denied", "peer_incompatible"})


@attrs.define(eq=False)
class Tracked:
    """A daemon of this host and what its events said: active peers and their advertised tags,
    per network. A lag re-reads the active peers from the peer tables."""

    member: swarm.Member
    active: dict[str, set[str]] = attrs.field(factory=dict)
    tags: dict[tuple[str, str], list[str]] = attrs.field(factory=dict)

    async def follow(self, changed: Changed) -> None:
        """Read the member's events for as long as the host runs."""
        async for event in self.member.events:
            if isinstance(event, Lagged):
                self._resync()
            elif event.kind == "peer_active":
                self.active.setdefault(event.data["network"], set()).add(event.data["device_id"])
            elif event.kind in LEAVING:
                self.active.get(event.data["network"], set()).discard(event.data["device_id"])
            elif event.kind == "peer_capabilities":
                key = (event.data["network"], event.data["device_id"])
                self.tags[key] = list(event.data["capabilities"]["tags"])
            changed.signal()

    def _resync(self) -> None:
        networks = self.member.services.networks.all()
        self.active = {net.config.id: set(net.peers.active_peers()) for net in networks}


@attrs.define(eq=False)
class Changed:
    """Wakes whoever waits for any tracked daemon's state to change."""

    _event: trio.Event = attrs.field(factory=trio.Event)

    def signal(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@attrs.define(eq=False)
class Host:
    """The daemons of this process and the commands that drive them."""

    root: Path
    size: int
    nursery: trio.Nursery
    changed: Changed = attrs.field(factory=Changed)
    daemons: list[Tracked] = attrs.field(factory=list)

    async def start(self, indices: list[int]) -> dict[str, Any]:
        for index in indices:
            member = await swarm.start_member(self.root, index, self.size, self.nursery)
            tracked = Tracked(member)
            self.nursery.start_soon(tracked.follow, self.changed)
            self.daemons.append(tracked)
        return {
            "devices": [d.member.services.identity.device_id for d in self.daemons],
            "sockets": [str(d.member.services.paths.socket) for d in self.daemons],
        }

    async def join(self, networks: list[str], url: str) -> dict[str, Any]:
        for tracked in self.daemons:
            for network in networks:
                await tracked.member.add_network(NetworkConfig(network, [url], auto_approve=True))
        return {}

    async def formed(self, networks: list[str], peers: int, timeout: float) -> dict[str, Any]:
        def sessions() -> int:
            return sum(len(d.active.get(n, ())) for d in self.daemons for n in networks)

        wanted = len(self.daemons) * len(networks) * peers
        with trio.move_on_after(timeout):
            while sessions() < wanted:
                await self.changed.wait()
        return {"formed": sessions() >= wanted, "sessions": sessions()}

    async def advert(self, network: str, sender: str, tag: str, timeout: float) -> dict[str, Any]:
        for tracked in self.daemons:
            if tracked.member.device_id == sender:
                joined = tracked.member.network(network)
                save = functools.partial(  # as the capabilities_set op: save, then advertise
                    network_db.put_setting,
                    network=network,
                    key=CAPABILITIES_KEY,
                    value=converter.unstructure(Capabilities(tags=[tag])),
                )
                await tracked.member.services.store.call(save, what="save capabilities")
                await joined.ask_await("advertise capabilities", joined.peers.advertise_saved)
        receivers = [d for d in self.daemons if d.member.device_id != sender]

        def seen() -> bool:
            return all(d.tags.get((network, sender)) == [tag] for d in receivers)

        with trio.move_on_after(timeout):
            while not seen():
                await self.changed.wait()
        return {"seen": seen()}

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        match command.pop("op"):
            case "start":
                return await self.start(**command)
            case "join":
                return await self.join(**command)
            case "formed":
                return await self.formed(**command)
            case "advert":
                return await self.advert(**command)
            case other:
                raise ValueError(f"unknown command {other!r}")


async def serve(root: Path, size: int, answers: int) -> None:
    """Answer commands from stdin until it closes, then stop every daemon."""
    commands = trio.lowlevel.FdStream(os.dup(0))
    async with trio.open_nursery() as nursery:
        host = Host(root, size, nursery)
        buffer = b""
        while True:
            chunk = await commands.receive_some(MAX_COMMAND_BYTES)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = await host.handle(json.loads(line))
                os.write(answers, json.dumps(answer).encode() + b"\n")
        nursery.cancel_scope.cancel()  # daemons stop as on SIGTERM


def main() -> None:
    root, size = Path(sys.argv[1]), int(sys.argv[2])
    answers = os.dup(1)
    os.dup2(2, 1)  # stray prints must not reach the coordinator's answer stream
    configure_logging(level="warning")
    os.write(answers, b'{"ready": true}\n')
    trio.run(serve, root, size, answers)


if __name__ == "__main__":
    main()
