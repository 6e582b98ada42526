"""Brokers in a cluster, measured (scripts/scale, part `cluster`): three brokers sharing a real
redis-server. Two daemons on one standalone broker, on the same broker of the cluster and on
different brokers, in one run: an RPC round trip and channel messages per second; then a
swarm across the three brokers forming one network (time to form, broker CPU per routed
frame)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from scripts.benchlib import meshbench
from scripts.benchlib.redisserver import running_redis
from scripts.benchlib.swarmscale import (
    FORM_TIMEOUT,
    NETWORK,
    HostFailed,
    directed_rpcs,
    idle_window,
    measure_swarm,
    start_daemons,
    swarm_of,
)

BROKERS = 3  # brokers in the cluster
PLACEMENTS = {"same_broker": [0, 0], "different_brokers": [0, 1]}  # host n joins broker [n]
FLOOD_BYTES = 128  # one channel message's payload


def measure_pair(
    root: Path, cluster: str | None, placement: list[int], idle_s: float, rpcs: int, flood: int
) -> dict[str, Any]:
    """Two daemons (one per host) joined through the brokers `placement` names (of the cluster
    at `cluster`, or of one standalone broker): RPC round trips and channel messages per
    second d0 → d1."""
    brokers = BROKERS if cluster is not None else 1
    with swarm_of(root, 2, 2, brokers, cluster) as swarm:
        start_daemons(swarm, 2)
        swarm.join([NETWORK], placement)
        answers = swarm.everyone(
            "formed", FORM_TIMEOUT, networks=[NETWORK], peers=1, timeout=FORM_TIMEOUT
        )
        if not all(a["formed"] for a in answers):
            raise HostFailed(f"the two daemons did not become active (brokers {placement})")
        pids = swarm.pids()
        idle = idle_window(pids, idle_s)
        return {
            "brokers": placement,
            "directed": directed_rpcs(swarm, pids, rpcs, idle),
            "channel_msgs_per_s": meshbench.flood_rate(swarm, 1, flood, FLOOD_BYTES, 1),
            "channel_sent": flood,
            "broker_errors": swarm.broker_errors(),
        }


def measure_cluster(
    root: Path, swarm_size: int, idle_s: float, rpcs: int, flood: int
) -> dict[str, Any]:
    """The pair on a standalone broker, on one broker of the cluster and across two, then the
    swarm across three; a fresh Redis for each."""
    report: dict[str, Any] = {"brokers": BROKERS}
    standalone = root / "standalone"
    standalone.mkdir()
    report["standalone"] = measure_pair(standalone, None, [0, 0], idle_s, rpcs, flood)
    print(json.dumps({"standalone": report["standalone"]}), file=sys.stderr, flush=True)
    for name, placement in PLACEMENTS.items():
        directory = root / name
        directory.mkdir()
        with running_redis(directory / "redis") as redis:
            report[name] = measure_pair(directory, redis.url, placement, idle_s, rpcs, flood)
        print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)
    directory = root / "swarm"
    directory.mkdir()
    with running_redis(directory / "redis") as redis:
        report["swarm"] = measure_swarm(directory, swarm_size, 1, idle_s, rpcs, BROKERS, redis.url)
    return report
