"""Many daemons on one broker in one network, as actor trees in ONE trio run (as
tests/network/conftest.py does): memory and CPU per peer, and the cost of one frame to a peer
as the network grows (a capability advert from one daemon to all the others)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.actors import Lagged, Subscriber
from meshactors.broker.server import Broker
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.services import Services
from meshactors.identity import load_or_create_identity
from meshactors.network.config import NetworkConfig
from meshactors.paths import prepare_dirs, resolve_paths
from meshactors.store.events import Event
from meshactors.wire.peer import Capabilities
from scripts.benchlib.resources import rss_kib

NETWORK = "swarm"
FORM_TIMEOUT = 600.0  # seconds for a full mesh of N daemons to become active
ROUND_TIMEOUT = 120.0  # seconds for one advert to reach every peer
EVENTS_PER_PEER = 16  # event queue per daemon, per peer it may hear of, before lagging


Predicate = Callable[[Event], bool]


@attrs.define(eq=False)
class Member:
    """One in-process daemon and a live reader of its events."""

    services: Services
    events: Subscriber[Event]

    async def wait(self, predicate: Predicate, count: int) -> None:
        """Read events until `count` of them matched `predicate`."""
        seen = 0
        while seen < count:
            event = await self.events.receive()
            if not isinstance(event, Lagged) and predicate(event):
                seen += 1


async def _all_wait(members: list[Member], predicate: Predicate, count: int) -> None:
    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(member.wait, predicate, count)


async def _start_member(root: Path, index: int, size: int, nursery: trio.Nursery) -> Member:
    paths = resolve_paths({"MESHACTORS_HOME": str(root / f"d{index}")})
    prepare_dirs(paths)
    identity = attrs.evolve(load_or_create_identity(paths.identity_file), label=f"d{index}")
    services: Services = await nursery.start(serve, DaemonOptions(paths=paths, identity=identity))
    return Member(services, services.events.subscribe(EVENTS_PER_PEER * size + 64))


async def measure_swarm(root: Path, size: int, rounds: int, idle_s: float) -> dict[str, Any]:
    """Start `size` daemons, form the mesh (auto-approve), idle, then `rounds` adverts."""
    pid = os.getpid()
    rss_before, cpu_before = rss_kib(pid), time.process_time()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(Broker().serve, "127.0.0.1", 0)
        members = [await _start_member(root, i, size, nursery) for i in range(size)]
        started = time.perf_counter()
        config = NetworkConfig(NETWORK, [f"ws://127.0.0.1:{port}/v1"], auto_approve=True)
        for member in members:
            assert member.services.networks is not None
            await member.services.networks.add(config)
        with trio.fail_after(FORM_TIMEOUT):
            await _all_wait(members, lambda e: e.kind == "peer_active", size - 1)
        formed_s = time.perf_counter() - started
        rss_formed, cpu_formed = rss_kib(pid), time.process_time()

        await trio.sleep(idle_s)  # the idle window: what the mesh costs when nothing flows
        idle_cpu = (time.process_time() - cpu_formed) / idle_s

        sender, others = members[0], members[1:]
        assert sender.services.networks is not None
        peers = sender.services.networks.get(NETWORK).peers
        sender_id = sender.services.identity.device_id
        cpu_rounds, wall_began = time.process_time(), time.perf_counter()
        for n in range(rounds):
            tag = f"round{n}"
            await peers.set_capabilities(Capabilities(tags=[tag]))
            with trio.fail_after(ROUND_TIMEOUT):
                await _all_wait(
                    others,
                    lambda e, tag=tag: (
                        e.kind == "peer_capabilities"
                        and e.data.get("device_id") == sender_id
                        and e.data["capabilities"]["tags"] == [tag]
                    ),
                    1,
                )
        deliveries = rounds * (size - 1)
        cpu_per_delivery = (time.process_time() - cpu_rounds) / deliveries
        wall_per_round = (time.perf_counter() - wall_began) / rounds
        nursery.cancel_scope.cancel()  # daemons and broker stop as on SIGTERM
    return {
        "daemons": size,
        "mesh_formed_s": round(formed_s, 2),
        "form_cpu_s": round(cpu_formed - cpu_before, 2),
        "kib_per_daemon": round((rss_formed - rss_before) / size, 1),
        "idle_cpu_percent_per_daemon": round(idle_cpu * 100 / size, 3),
        "advert_rounds": rounds,
        "cpu_us_per_delivery": round(cpu_per_delivery * 1e6, 1),
        "wall_ms_per_advert_to_all": round(wall_per_round * 1000, 2),
    }
