"""Measure the mesh: a broker and two daemons as real processes in temporary homes, a client
on each side (client A here, the others processes): RPC round trips, streamed RPC, channel
throughput and fan-out."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.client import SyncClient
from scripts.benchlib.baseline import ROOT, free_port
from scripts.benchlib.meshclient import Lines, request_template

NETWORK = "bench"
READY_TIMEOUT = 30.0  # seconds for processes to start and the peers to become active
IN_FLIGHT = 120  # requests client A keeps outstanding (the daemon allows 128 per connection)
BATCH = 64  # messages per request in the batched channel run
LARGE = 16 * 1024  # bytes of a large channel message and of a streamed chunk
FANOUT_PEERS = 3  # receiving daemons in the fan-out run (A sends to all of them)
FLOOD_RUNS = 3  # runs of each flood; the figure is their median (the host's speed drifts)


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


def _active(home: Path, peers: int) -> bool:
    with SyncClient.connect(home / "daemon.sock") as client:
        listed = client.call("peers_list", network=NETWORK)["peers"]
    return sum(peer["status"] == "active" for peer in listed) >= peers  # type: ignore[no-any-return]


@attrs.frozen
class Mesh:
    """The daemons of a bench mesh: their sockets and device ids, A first."""

    sockets: list[Path]
    devices: list[str]


@contextmanager
def mesh_of(size: int) -> Iterator[Mesh]:
    """Broker + `size` daemons (processes), every pair of peers active."""
    with tempfile.TemporaryDirectory(prefix="meshbench-") as tmp:
        port = free_port()
        broker = subprocess.Popen(
            [sys.executable, "-m", "meshactors", "broker", "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        homes = [Path(tmp, f"d{n}") for n in range(size)]
        try:
            _wait(lambda: _accepting(port), "the broker listening")
            for home in homes:
                _cli(home, "daemon", "up", "--detach")
                url = f"ws://127.0.0.1:{port}/v1"
                _cli(home, "network", "add", NETWORK, "--broker", url, "--auto-approve")
            for home in homes:
                _wait(lambda home=home: _active(home, size - 1), "the peers active")
            devices = []
            for home in homes:
                with SyncClient.connect(home / "daemon.sock") as client:
                    devices.append(client.call("status")["device_id"])
            yield Mesh([home / "daemon.sock" for home in homes], devices)
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
    return await rpc_block(Lines(await trio.open_unix_socket(str(sock))), peer, count, size)


async def rpc_block(lines: Lines, peer: str, count: int, size: int) -> list[float]:
    """`count` rpc_call echo round trips on an open connection; seconds each. The request is
    encoded once and each answer checked by its first bytes: like the relay's client, this one
    spends no time on JSON, so the round trip is the daemons' and the broker's."""
    payload = "x" * (size - 2)  # as JSON: two quotes and the text
    head, tail = request_template(
        "rpc_call", network=NETWORK, peer=peer, method="echo", payload=payload
    )
    samples = []
    for _ in range(count):
        lines.next_id += 1
        began = time.perf_counter()
        await lines.stream.send_all(head + b"%d" % lines.next_id + tail)
        answer = await lines.complete()
        samples.append(time.perf_counter() - began)
        if not answer.startswith(b'{"id":%d,"ok":true,' % lines.next_id):
            raise AssertionError(answer.decode())
    return samples


async def channel_flood(
    sock: Path, peer: str | None, count: int, size: int, batch: int = 1
) -> None:
    """Send `count` channel messages of a `size`-byte payload, `batch` per request (one
    `payload`, or `payloads`), IN_FLIGHT requests at a time; to `peer`, or to all if None.

    Requests are pre-encoded lines, written as many at once as answers free slots, by the task
    that reads the answers; answers are checked in bulk (every one must be ok) so that this
    client is not the bottleneck.
    """
    lines = Lines(await trio.open_unix_socket(str(sock)))
    payload = "x" * (size - 2)
    requests = count // batch
    message: dict[str, object] = (
        {"payload": payload} if batch == 1 else {"payloads": [payload] * batch}
    )
    op, target = ("channel_send_all", {}) if peer is None else ("channel_send_to", {"peer": peer})
    head, tail = request_template(op, network=NETWORK, channel="flood", **target, **message)

    async def send(ids: range) -> None:
        await lines.stream.send_all(b"".join(head + b"%d" % n + tail for n in ids))

    sent = min(IN_FLIGHT, requests)
    await send(range(sent))
    answered = 0
    while answered < requests:
        answers = await lines.complete()
        count = answers.count(b"\n")
        if answers.count(b'"ok":true') != count:
            bad = [line for line in answers.splitlines() if b'"ok":true' not in line]
            raise AssertionError(bad[0].decode())
        answered += count
        more = min(count, requests - sent)
        await send(range(sent, sent + more))
        sent += more


def flood_rate(mesh: Mesh, receivers: int, count: int, size: int, batch: int) -> int:
    """Messages per second received, all `receivers` together, from client A: to B alone
    (one receiver) or to every peer (channel_send_all). `mesh` is anything with the daemons'
    `sockets` and `devices`, A first (a swarm too)."""
    count -= count % batch
    peer = mesh.devices[1] if receivers == 1 else None
    with ExitStack() as stack:
        sinks = [
            stack.enter_context(role("sink", str(sock), NETWORK, "flood", str(count)))
            for sock in mesh.sockets[1 : receivers + 1]
        ]
        began = time.perf_counter()
        trio.run(channel_flood, mesh.sockets[0], peer, count, size, batch)
        received = 0
        for sink in sinks:
            assert sink.stdout is not None
            received += int(sink.stdout.readline().split()[1])
        elapsed = time.perf_counter() - began
    return round(received / elapsed)


async def stream_throughput(sock: Path, peer: str, chunks: int, size: int) -> float:
    """Bytes per second of one streamed call of `chunks` chunks of `size` bytes, as received."""
    lines = Lines(await trio.open_unix_socket(str(sock)))
    began = time.perf_counter()
    await lines.send(
        "rpc_call_stream",
        network=NETWORK,
        peer=peer,
        method="stream",
        payload={"chunks": chunks, "size": size},
        timeout_ms=600_000,
    )
    received = 0
    while True:
        for frame in await lines.frames():
            if frame.get("kind") == "rpc_call_stream_chunk":
                received += len(str(frame["payload"]))
            elif frame.get("kind") == "rpc_call_stream_end":
                assert frame.get("error") is None, frame
                return received / (time.perf_counter() - began)
            else:
                assert frame.get("ok"), frame


def measure_mesh(
    flood_count: int, size: int = 128, fanout_peers: int = FANOUT_PEERS
) -> dict[str, Any]:
    """The mesh's throughput figures for the report: streamed RPC MB/s, channel throughput at
    `size` and at LARGE bytes, one message per request and BATCH per request (`payloads`),
    and fan-out from A to `fanout_peers` peers (its round trips: scripts/benchlib/rpcpair.py).
    Each flood runs FLOOD_RUNS times: its figure is the median, `flood_runs` holds them all."""
    large_count = max(BATCH, flood_count // (LARGE // size))
    floods = {  # figure: receivers, messages, size, messages per request
        "channel_msgs_per_s": (1, flood_count, size, 1),
        "channel_msgs_per_s_batched": (1, flood_count, size, BATCH),
        "channel_16k_msgs_per_s": (1, large_count, LARGE, 1),
        "fanout_deliveries_per_s_batched": (fanout_peers, flood_count, size, BATCH),
    }
    with mesh_of(fanout_peers + 1) as mesh:
        with role("streamer", str(mesh.sockets[1]), NETWORK):
            stream_bps = trio.run(
                stream_throughput, mesh.sockets[0], mesh.devices[1], large_count, LARGE
            )
        runs = {
            figure: [flood_rate(mesh, *flood) for _ in range(FLOOD_RUNS)]
            for figure, flood in floods.items()
        }
        return {
            "stream_mb_per_s": round(stream_bps / 1e6, 1),
            "stream_chunk_bytes": LARGE,
            **{figure: statistics.median_low(rates) for figure, rates in runs.items()},
            "flood_runs": runs,
            "fanout_peers": fanout_peers,
            "channel_batch": BATCH,
            "channel_sent": flood_count,
        }


if __name__ == "__main__":
    print(json.dumps(measure_mesh(50_000), indent=2))
