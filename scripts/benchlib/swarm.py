"""Daemons as actor trees in one trio run (as tests/network/conftest.py does), each in its own
home with its own key, and a live reader of each one's events. A swarm host process
(swarmhost.py) runs many of them; chaos scenarios run a few."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from meshactors.actors import Lagged, Subscriber
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.services import Services
from meshactors.identity import load_or_create_identity
from meshactors.network.config import NetworkConfig
from meshactors.network.network import Network
from meshactors.paths import prepare_dirs, resolve_paths
from meshactors.store.events import Event

FORM_TIMEOUT = 1200.0  # seconds for a full mesh of N daemons to become active (300: minutes)
ROUND_TIMEOUT = 120.0  # seconds for one advert to reach every peer
EVENTS_PER_PEER = 16  # event queue per daemon, per peer it may hear of, before lagging


Predicate = Callable[[Event], bool]


@attrs.define(eq=False)
class Member:
    """One in-process daemon and a live reader of its events."""

    services: Services
    events: Subscriber[Event]

    @property
    def device_id(self) -> str:
        return self.services.identity.device_id

    async def add_network(self, config: NetworkConfig) -> None:
        """Join a network as the network_add op does."""
        await self.services.networks.add(config)

    def network(self, network_id: str) -> Network:
        """A joined network (its core reached through `Network.ask`)."""
        return self.services.networks.get(network_id)

    async def wait(self, predicate: Predicate, count: int) -> None:
        """Read events until `count` of them matched `predicate`."""
        seen = 0
        while seen < count:
            event = await self.events.receive()
            if not isinstance(event, Lagged) and predicate(event):
                seen += 1


async def all_wait(members: list[Member], predicate: Predicate, count: int) -> None:
    """Until every member read `count` events matching `predicate`."""
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.wait, predicate, count)


async def start_member(root: Path, index: int, size: int, nursery: trio.Nursery) -> Member:
    """Start daemon `d<index>` in `root` (its events queued for a network of `size`)."""
    paths = resolve_paths({"MESHACTORS_HOME": str(root / f"d{index}")})
    prepare_dirs(paths)
    identity = attrs.evolve(load_or_create_identity(paths.identity_file), label=f"d{index}")
    services: Services = await nursery.start(serve, DaemonOptions(paths=paths, identity=identity))
    events, _ = await services.events.subscribe(EVENTS_PER_PEER * size + 64)
    return Member(services, events)
