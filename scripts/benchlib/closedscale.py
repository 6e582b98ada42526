"""Closed network scale: how long an eviction takes to reach every member of a network of
N daemons (in-process, one broker), from the owner's `members_evict` to the last member's
`member_evicted` (and the evicted device's own `evicted`)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import trio

from meshactors.broker.server import Broker
from meshactors.clock import wall_ms
from meshactors.membership import store as log_db
from meshactors.membership.facts import new_genesis
from meshactors.network.config import NetworkConfig
from meshactors.store.events import Event
from scripts.benchlib import swarm

NET = "closed"
FORM_TIMEOUT = 600.0  # seconds for N members to be granted and active with the owner
EVICT_TIMEOUT = 120.0  # seconds for the eviction to reach every member


def _is(kind: str, **data: str) -> swarm.Predicate:
    def match(event: Event) -> bool:
        return event.kind == kind and all(event.data.get(k) == v for k, v in data.items())

    return match


async def _eviction(root: Path, size: int) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(Broker().serve, "127.0.0.1", 0)
        config = NetworkConfig(NET, [f"ws://127.0.0.1:{port}/v1"])
        members = [await swarm.start_member(root, i, size, nursery) for i in range(size)]
        owner, others, target = members[0], members[1:], members[-1]
        genesis = new_genesis(owner.services.identity, NET, wall_ms())
        started = time.perf_counter()
        for member in members:
            await member.services.store.call(
                functools.partial(log_db.save_genesis, genesis=genesis), what="save genesis"
            )
            await member.add_network(config)
        network = owner.services.networks.get(NET)
        for member in others:
            grant = functools.partial(
                network.membership.append, "grant", member.device_id, "member"
            )
            await network.ask_await("grant", grant)
        with trio.fail_after(FORM_TIMEOUT):
            active = _is("peer_active", network=NET, device_id=owner.device_id)
            await swarm.all_wait(others, active, 1)
        formed_s = time.perf_counter() - started
        evict = functools.partial(network.membership.append, "evict", target.device_id, "")
        reached: list[float] = []

        async def learns(member: swarm.Member) -> None:
            kind = "evicted" if member is target else "member_evicted"
            await member.wait(_is(kind, network=NET, device_id=target.device_id), 1)
            reached.append(time.perf_counter() - began)

        began = time.perf_counter()
        with trio.fail_after(EVICT_TIMEOUT):
            async with trio.open_nursery() as waits:
                for member in others:
                    waits.start_soon(learns, member)
                await network.ask_await("evict", evict)
        for member in members:
            member.services.shutdown.ring()
        nursery.cancel_scope.cancel()
    reached.sort()
    return {
        "members": size,
        "formed_s": round(formed_s, 3),
        "evict_reached_all_ms": round(reached[-1] * 1000, 1),
        "evict_reached_median_ms": round(reached[len(reached) // 2] * 1000, 1),
        "reached": len(reached),
    }


def measure_eviction(root: Path, size: int) -> dict[str, Any]:
    """One network of `size` daemons: the owner grants the others, then evicts the last."""
    result: dict[str, Any] = trio.run(_eviction, root, size)
    return result
