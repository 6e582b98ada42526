"""The NATS comparison: nats-server on 127.0.0.1, measured with nats-py in its own process.

`measure_nats(...)` (called from a bench script) starts `nats-server` on a free loopback port
when it is installed, makes sure the `bench` extra is in .venv (`scripts/_venv.sh bench`), and
runs `python -m scripts.benchlib.nats worker URL …` there: asyncio stays out of trio's process.
Without nats-server the figures are `{"skipped": "nats-server not installed; skipped"}`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.benchlib.resources import server_on_free_port
from scripts.benchlib.stats import latency_summary

ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT = 600.0  # seconds the whole measurement may take
DELIVERY_TIMEOUT = 120.0  # seconds one throughput or fan-out round may take to arrive
REQUEST_TIMEOUT = 5.0  # seconds one request/reply may take
WARMUP_FRACTION = 10  # the first 1/N round trips are warm-up, not counted
SKIPPED = "nats-server not installed; skipped"


@contextmanager
def nats_server(binary: str) -> Iterator[str]:
    """Run nats-server on 127.0.0.1 (free port) until the block ends; yields its URL."""
    with server_on_free_port([binary, "-a", "127.0.0.1", "-p", "{port}"]) as port:
        yield f"nats://127.0.0.1:{port}"


def bench_python() -> str:
    """The .venv interpreter with the `bench` extra installed (installed on demand)."""
    subprocess.run(["bash", str(ROOT / "scripts" / "_venv.sh"), "bench"], check=True)
    return str(ROOT / ".venv" / "bin" / "python")


def measure_nats(
    rtt_count: int, flood_count: int, fanout_subscribers: int, fanout_count: int
) -> dict[str, Any]:
    """Request/reply round trips (128 B), pub/sub msgs/s at 128 B and 16 KiB, fan-out to N."""
    binary = shutil.which("nats-server")
    if binary is None:
        print(SKIPPED, file=sys.stderr)
        return {"skipped": SKIPPED}
    python = bench_python()
    with nats_server(binary) as url:
        args = [str(n) for n in (rtt_count, flood_count, fanout_subscribers, fanout_count)]
        result = subprocess.run(
            [python, "-m", "scripts.benchlib.nats", "worker", url, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT,
            check=True,
        )
    figures: dict[str, Any] = json.loads(result.stdout)
    figures["server"] = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return figures


# The worker: asyncio and nats-py, run only inside the bench interpreter.


async def _request_reply(url: str, count: int, size: int) -> dict[str, float]:
    import nats

    server, client = await nats.connect(url), await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await server.subscribe("bench.echo", cb=echo)
    await server.flush()
    payload, samples = b"x" * size, []
    for _ in range(count):
        began = time.perf_counter()
        await client.request("bench.echo", payload, timeout=REQUEST_TIMEOUT)
        samples.append(time.perf_counter() - began)
    await client.close()
    await server.close()
    return latency_summary(samples[count // WARMUP_FRACTION :])


async def _fan_out(url: str, subscribers: int, count: int, size: int) -> dict[str, float]:
    """Publish `count` messages to `subscribers` connections; rates as received by all."""
    import nats

    publisher = await nats.connect(url)
    listeners = [await nats.connect(url) for _ in range(subscribers)]
    received = [0] * subscribers
    done = asyncio.Event()
    expected = subscribers * count

    def counter(index: int) -> Any:
        async def count_one(_msg: Any) -> None:
            received[index] += 1
            if sum(received) >= expected:
                done.set()

        return count_one

    for index, listener in enumerate(listeners):
        await listener.subscribe("bench.flood", cb=counter(index))
        await listener.flush()
    payload = b"x" * size
    began = time.perf_counter()
    for _ in range(count):
        await publisher.publish("bench.flood", payload)
    await publisher.flush()
    await asyncio.wait_for(done.wait(), DELIVERY_TIMEOUT)
    elapsed = time.perf_counter() - began
    for connection in [publisher, *listeners]:
        await connection.close()
    return {
        "msgs_per_s": round(count / elapsed),
        "deliveries_per_s": round(expected / elapsed),
        "mb_per_s": round(expected * size / elapsed / 1e6, 1),
    }


async def _worker(url: str, rtt: int, flood: int, fanout_subs: int, fanout: int) -> dict[str, Any]:
    return {
        "request_reply_128": await _request_reply(url, rtt, 128),
        "pubsub_128": await _fan_out(url, 1, flood, 128),
        "pubsub_16k": await _fan_out(url, 1, max(1, flood // 16), 16 * 1024),
        f"fanout_{fanout_subs}_128": await _fan_out(url, fanout_subs, fanout, 128),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        url, *numbers = sys.argv[2:]
        rtt, flood, subs, fanout = (int(n) for n in numbers)
        print(json.dumps(asyncio.run(_worker(url, rtt, flood, subs, fanout))))
    else:
        print(json.dumps(measure_nats(2000, 200_000, 10, 20_000), indent=2))
