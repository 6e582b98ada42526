"""Measure the mesh: a broker and two daemons as real processes in temporary homes, a client
on each side (client A here, client B a process): RPC round trips and channel throughput."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from meshactors.client import SyncClient
from scripts.benchlib.baseline import ROOT, free_port
from scripts.benchlib.meshclient import Lines
from scripts.benchlib.stats import latency_summary

NETWORK = "bench"
READY_TIMEOUT = 30.0  # seconds for processes to start and the peers to become active
IN_FLIGHT = 60  # requests client A keeps outstanding (the daemon allows 64 per connection)
BATCH = 64  # messages per request in the batched channel run


def _cli(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHACTORS_")}
    result = subprocess.run(
        [sys.executable, "-m", "meshactors", *args],
        env=env | {"MESHACTORS_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return result.stdout


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {READY_TIMEOUT}s")
        time.sleep(0.05)


def _accepting(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _active(home: Path) -> bool:
    with SyncClient.connect(home / "daemon.sock") as client:
        peers = client.call("peers_list", network=NETWORK)["peers"]
    return any(peer["status"] == "active" for peer in peers)


@contextmanager
def mesh_pair() -> Iterator[tuple[Path, Path, str]]:
    """Broker + daemons A and B, active peers; yields (socket A, socket B, device id of B)."""
    with tempfile.TemporaryDirectory(prefix="meshbench-") as tmp:
        port = free_port()
        broker = subprocess.Popen(
            [sys.executable, "-m", "meshactors", "broker", "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        homes = [Path(tmp, "a"), Path(tmp, "b")]
        try:
            _wait(lambda: _accepting(port), "the broker listening")
            for home in homes:
                _cli(home, "daemon", "up", "--detach")
                url = f"ws://127.0.0.1:{port}/v1"
                _cli(home, "network", "add", NETWORK, "--broker", url, "--auto-approve")
            for home in homes:
                _wait(lambda home=home: _active(home), "the peers active")  # type: ignore[misc]
            with SyncClient.connect(homes[1] / "daemon.sock") as client:
                device_b = client.call("status")["device_id"]
            yield homes[0] / "daemon.sock", homes[1] / "daemon.sock", device_b
        finally:
            for home in homes:
                subprocess.run(
                    [sys.executable, "-m", "meshactors", "daemon", "down"],
                    env={**os.environ, "MESHACTORS_HOME": str(home)},
                    capture_output=True,
                    check=False,
                    cwd=ROOT,
                )
            broker.kill()
            broker.wait()


@contextmanager
def role(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Run a client role (scripts/benchlib/meshclient.py) until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.benchlib.meshclient", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait()


async def rpc_round_trips(sock: Path, peer: str, count: int, size: int) -> list[float]:
    """Sequential rpc_call echo round trips of a `size`-byte payload; seconds each."""
    lines = Lines(await trio.open_unix_socket(str(sock)))
    payload = "x" * (size - 2)  # as JSON: two quotes and the text
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        await lines.send("rpc_call", network=NETWORK, peer=peer, method="echo", payload=payload)
        (answer,) = await lines.frames()
        assert answer.get("ok"), answer
        samples.append(time.perf_counter() - began)
    return samples


async def channel_flood(sock: Path, peer: str, count: int, size: int, batch: int = 1) -> None:
    """Send `count` channel messages of a `size`-byte payload, `batch` per request (one
    `payload`, or `payloads`), IN_FLIGHT requests at a time."""
    lines = Lines(await trio.open_unix_socket(str(sock)))
    payload = "x" * (size - 2)
    slots = trio.Semaphore(IN_FLIGHT)
    requests = count // batch
    message: dict[str, object] = (
        {"payload": payload} if batch == 1 else {"payloads": [payload] * batch}
    )

    async def read_answers() -> None:
        answered = 0
        while answered < requests:
            for frame in await lines.frames():
                assert frame.get("ok"), frame
                answered += 1
                slots.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_answers)
        for _ in range(requests):
            await slots.acquire()
            await lines.send(
                "channel_send_to", network=NETWORK, channel="flood", peer=peer, **message
            )


def _flood_rate(sock_a: Path, sock_b: Path, peer: str, count: int, size: int, batch: int) -> int:
    """Messages per second from client A to client B's subscription."""
    count -= count % batch
    with role("sink", str(sock_b), NETWORK, "flood", str(count)) as sink:
        began = time.perf_counter()
        trio.run(channel_flood, sock_a, peer, count, size, batch)
        assert sink.stdout is not None
        report = sink.stdout.readline().split()
        elapsed = time.perf_counter() - began
    return round(int(report[1]) / elapsed)


def measure_mesh(rtt_count: int, flood_count: int, size: int = 128) -> dict[str, object]:
    """The mesh's figures for the report: channel throughput one message per request and
    BATCH per request (`payloads`)."""
    with mesh_pair() as (sock_a, sock_b, device_b):
        with role("echo", str(sock_b), NETWORK):
            samples = trio.run(rpc_round_trips, sock_a, device_b, rtt_count, size)
        single = _flood_rate(sock_a, sock_b, device_b, flood_count, size, 1)
        batched = _flood_rate(sock_a, sock_b, device_b, flood_count, size, BATCH)
    return {
        "rtt": latency_summary(samples[rtt_count // 10 :]),
        "channel_msgs_per_s": single,
        "channel_msgs_per_s_batched": batched,
        "channel_batch": BATCH,
        "channel_sent": flood_count,
    }


if __name__ == "__main__":
    print(json.dumps(measure_mesh(2000, 50_000), indent=2))
