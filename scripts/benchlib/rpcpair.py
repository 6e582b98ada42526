"""RPC round trips of the mesh and of the stack relay, measured in alternating blocks.

Both chains stand up at once (a broker, two daemons and their echo client; the four relay
processes) and take turns: BLOCKS blocks each, mesh then relay. This machine's speed drifts
by tens of percent within a minute (docs/performance.md), so measuring one chain after the
other put that drift into their ratio; taking turns spreads it over both. Each block's first
tenth is dropped as warm-up, on both sides alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from scripts.benchlib.baseline import relay_block, relay_chain
from scripts.benchlib.meshbench import NETWORK, mesh_of, role, rpc_block
from scripts.benchlib.meshclient import Lines
from scripts.benchlib.relay import open_stream
from scripts.benchlib.stats import latency_summary

BLOCKS = 10  # turns each chain takes


async def paired_round_trips(
    sock: Path, peer: str, relay: str, count: int, size: int
) -> tuple[list[float], list[float]]:
    """About `count` kept round trips of `size` bytes each way, mesh (an rpc_call echo from
    `sock` to `peer`) and relay (a ping-pong on `relay`), in alternating blocks; seconds."""
    lines = Lines(await trio.open_unix_socket(str(sock)))
    stream = await open_stream(relay)
    buffer = bytearray()
    per_block = max(10, count * 10 // 9 // BLOCKS)
    warm = per_block // 10
    mesh: list[float] = []
    baseline: list[float] = []
    for _ in range(BLOCKS):
        mesh += (await rpc_block(lines, peer, per_block, size))[warm:]
        baseline += (await relay_block(stream, buffer, per_block, size))[warm:]
    await stream.aclose()
    return mesh, baseline


def _figures(samples: list[float]) -> dict[str, Any]:
    return {"rtt": latency_summary(samples), "rtt_samples_us": [round(s * 1e6, 1) for s in samples]}


def measure_rpc(count: int, size: int) -> dict[str, dict[str, Any]]:
    """Round-trip figures (every kept sample too, for the plot) of the mesh and the relay."""
    with (
        mesh_of(2) as mesh,
        role("echo", str(mesh.sockets[1]), NETWORK),
        relay_chain("echo") as relay,
    ):
        samples = trio.run(paired_round_trips, mesh.sockets[0], mesh.devices[1], relay, count, size)
    return {"mesh": _figures(samples[0]), "relay": _figures(samples[1])}
