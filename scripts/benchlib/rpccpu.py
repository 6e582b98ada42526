"""Where an RPC round trip's time goes: the CPU each process of the mesh's chain and of the
stack relay's spends per round trip (run by hand: `python -m scripts.benchlib.rpccpu
[ROUND_TRIPS]`; docs/performance.md, "Where a round trip's time goes").

Both chains stand up at once and take turns in blocks, as in `rpcpair`; each process's CPU
time (all its threads, from /proc/PID/task/*/schedstat, in nanoseconds) is summed over its own
chain's blocks. Client A is this process for both chains, measured by `time.process_time`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from scripts.benchlib.baseline import relay_block, relay_chain
from scripts.benchlib.meshbench import NETWORK, Mesh, mesh_of, role, rpc_block
from scripts.benchlib.meshclient import Lines
from scripts.benchlib.relay import open_stream

SIZE = 128  # payload bytes each way, as in the bench's round trips
HOP_TASKS = 4  # tasks a message passes through in the hand-off measure
HOP_TRIPS = 20_000
BLOCKS = 10  # turns each chain takes
CLIENT_A = "client A (this process)"

# How each chain's processes are told apart by their command lines, first match wins (the
# mesh's daemons are found by their pid files).
ROLES = (
    ("mesh", "broker", "-m meshactors broker"),
    ("mesh", "client B (echo)", "scripts.benchlib.meshclient echo"),
    ("relay", "broker", "scripts.benchlib.relay broker"),
    ("relay", "client B (echo)", "scripts.benchlib.relay echo"),
    ("relay", "daemon A", "/a.sock"),
    ("relay", "daemon B", "/b.sock"),
)


@attrs.frozen
class ChainCpu:
    """One chain's figures: round trips made, their p50 (µs) and CPU µs per round trip by
    process."""

    round_trips: int
    p50_us: float
    cpu_us: dict[str, float]


def cpu_ns(pid: int) -> int:
    """CPU time a process's threads alive now have run, in nanoseconds: a thread that ends
    within a block takes its time with it (a daemon's worker threads sit idle during round
    trips; /proc/PID/stat would keep it, but only to the clock tick)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks)


def _children(parent: int) -> dict[int, str]:
    """The command lines of `parent`'s child processes, by pid."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found[int(entry.name)] = cmdline
    return found


def chain_pids(mesh: Mesh) -> dict[str, dict[str, int]]:
    """Each chain's processes by role; the mesh's daemons by their pid files."""
    pids: dict[str, dict[str, int]] = {"mesh": {}, "relay": {}}
    for name, sock in zip(("daemon A", "daemon B"), mesh.sockets, strict=False):
        pids["mesh"][name] = int((sock.parent / "daemon.pid").read_text())
    for pid, cmdline in _children(os.getpid()).items():
        for chain, name, mark in ROLES:
            if mark in cmdline:
                pids[chain][name] = pid
                break
    return pids


async def measure(
    sock: Path, peer: str, relay: str, pids: dict[str, dict[str, int]], count: int
) -> dict[str, ChainCpu]:
    """About `count` round trips each, in alternating blocks; the figures of both chains."""
    lines = Lines(await trio.open_unix_socket(str(sock)))
    stream = await open_stream(relay)
    buffer = bytearray()
    blocks: dict[str, Callable[[int], Awaitable[list[float]]]] = {
        "mesh": lambda n: rpc_block(lines, peer, n, SIZE),
        "relay": lambda n: relay_block(stream, buffer, n, SIZE),
    }
    per_block = max(10, count // BLOCKS)
    for block in blocks.values():  # warm up both before measuring
        await block(per_block // 10)
    samples: dict[str, list[float]] = {chain: [] for chain in blocks}
    spent: dict[str, dict[str, int]] = {
        chain: dict.fromkeys([*pids[chain], CLIENT_A], 0) for chain in blocks
    }
    for _ in range(BLOCKS):
        for chain, block in blocks.items():
            before = {name: cpu_ns(pid) for name, pid in pids[chain].items()}
            began = time.process_time_ns()
            samples[chain] += await block(per_block)
            spent[chain][CLIENT_A] += time.process_time_ns() - began
            for name, pid in pids[chain].items():
                spent[chain][name] += cpu_ns(pid) - before[name]
    await stream.aclose()
    return {
        chain: ChainCpu(
            len(samples[chain]),
            round(statistics.median(samples[chain]) * 1e6, 1),
            {name: round(ns / 1e3 / len(samples[chain]), 1) for name, ns in spent[chain].items()},
        )
        for chain in blocks
    }


async def hand_offs(tasks: int, trips: int) -> float:
    """Seconds per hand-off: `trips` messages, one at a time, each passed along `tasks` trio
    tasks by bounded memory channels and back to the sender (tasks + 1 hand-offs each)."""
    channels = [trio.open_memory_channel[int](16) for _ in range(tasks + 1)]

    async def pass_on(index: int) -> None:
        async for message in channels[index][1]:
            await channels[index + 1][0].send(message)

    async with trio.open_nursery() as nursery:
        for index in range(tasks):
            nursery.start_soon(pass_on, index)
        began = time.perf_counter()
        for trip in range(trips):
            await channels[0][0].send(trip)
            await channels[tasks][1].receive()
        spent = time.perf_counter() - began
        nursery.cancel_scope.cancel()
    return spent / trips / (tasks + 1)


def hand_off_us() -> float:
    """What one memory-channel hand-off between trio tasks costs here, µs (wall = CPU: the
    tasks share one thread and never wait on I/O)."""
    return round(trio.run(hand_offs, HOP_TASKS, HOP_TRIPS) * 1e6, 2)


def measure_cpu(count: int) -> dict[str, ChainCpu]:
    """Stand both chains up and measure them (see `measure`)."""
    with (
        mesh_of(2) as mesh,
        role("echo", str(mesh.sockets[1]), NETWORK),
        relay_chain("echo") as relay,
    ):
        pids = chain_pids(mesh)
        return trio.run(measure, mesh.sockets[0], mesh.devices[1], relay, pids, count)


def report(figures: dict[str, ChainCpu]) -> str:
    """The figures as a Markdown table: CPU µs per round trip by process, the chains side by
    side."""
    mesh, relay = figures["mesh"], figures["relay"]
    rows = [
        "| process | mesh, CPU µs per round trip | stack relay | mesh - relay |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys([*mesh.cpu_us, *relay.cpu_us]):
        ours, theirs = mesh.cpu_us.get(name, 0.0), relay.cpu_us.get(name, 0.0)
        rows.append(f"| {name} | {ours:,.1f} | {theirs:,.1f} | {ours - theirs:+,.1f} |")
    total = sum(mesh.cpu_us.values()), sum(relay.cpu_us.values())
    rows.append(f"| all | {total[0]:,.1f} | {total[1]:,.1f} | {total[0] - total[1]:+,.1f} |")
    gap = mesh.p50_us - relay.p50_us
    rows.append(f"| round trip p50, µs | {mesh.p50_us:,.1f} | {relay.p50_us:,.1f} | {gap:+,.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(report(measure_cpu(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)))
    print(f"\none memory-channel hand-off between trio tasks: {hand_off_us()} µs")
