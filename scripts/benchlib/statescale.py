"""How long a network's replicated state takes to reach a member that joins late: real
daemon processes and a broker process, `keys` written on one daemon before the other joins,
timed until every key is in the late joiner's map (its `state_changed` events)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from meshactors.client import MeshClient
from scripts.benchlib.resources import SETTLE_TIMEOUT, cpu_seconds, running_broker, running_daemon

NETWORK = "scale-state"
WRITE_BATCH = 100  # state_set requests in flight at once while the first daemon fills its map
VALUE = {"text": "x" * 40}  # each key's value besides its number (about 80 bytes as JSON)


async def _fill(client: MeshClient, keys: int) -> None:
    """Write `keys` keys, WRITE_BATCH at a time."""
    for start in range(0, keys, WRITE_BATCH):
        async with trio.open_nursery() as nursery:
            for n in range(start, min(keys, start + WRITE_BATCH)):
                nursery.start_soon(client.state_set, NETWORK, f"k/{n:06d}", VALUE | {"n": n})


async def _late_join(
    writer_sock: Path, joiner_sock: Path, url: str, keys: int, pids: tuple[int, int]
) -> dict[str, Any]:
    config = {"id": NETWORK, "brokers": [url], "auto_approve": True}
    async with MeshClient(writer_sock) as writer, MeshClient(joiner_sock) as joiner:
        await writer.network_add(config)
        began = time.perf_counter()
        await _fill(writer, keys)
        filled = time.perf_counter() - began
        cpu_before = sum(map(cpu_seconds, pids))
        seen: set[str] = set()
        active_at = None
        with joiner.events() as events, trio.fail_after(SETTLE_TIMEOUT):
            began = time.perf_counter()
            await joiner.network_add(config)
            async for event in events:
                if event.get("kind") == "peer_active" and active_at is None:
                    active_at = time.perf_counter()
                elif event.get("kind") == "state_changed" and event.get("network") == NETWORK:
                    seen.add(event["key"])
                    if len(seen) == keys:
                        break
        done = time.perf_counter()
        listed = await joiner.state_list(NETWORK, prefix="k/", limit=1)
        assert listed["entries"], "the late joiner lists no key"
        return {
            "keys": keys,
            "fill_s": round(filled, 3),
            "join_to_all_keys_s": round(done - began, 3),
            "active_to_all_keys_s": round(done - (active_at or began), 3),
            "cpu_s": round(sum(map(cpu_seconds, pids)) - cpu_before, 3),
        }


def late_joiner(keys: int) -> dict[str, Any]:
    """Fill one daemon's map with `keys` keys, then time a second daemon's join until it
    holds all of them (and the CPU both daemons spent meanwhile)."""
    with (
        tempfile.TemporaryDirectory(prefix="scale-") as tmp,
        running_broker() as url,
        running_daemon(Path(tmp) / "a") as (writer_pid, writer_sock),
        running_daemon(Path(tmp) / "b") as (joiner_pid, joiner_sock),
    ):
        return trio.run(_late_join, writer_sock, joiner_sock, url, keys, (writer_pid, joiner_pid))
