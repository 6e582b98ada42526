"""What a real daemon process costs: RSS per idle client and per joined network, cold start to
ready, and the latency of many clients' status round trips at once. Read from /proc."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from meshactors.client import MeshClient
from scripts.benchlib.baseline import free_port
from scripts.benchlib.stats import latency_summary

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60.0  # seconds one `meshactors …` command may take
SETTLE_TIMEOUT = 60.0  # seconds for clients to connect or networks to come up
CONNECT_BATCH = 100  # clients connected at once (the listener's backlog is finite)
NETWORK_ID_PREFIX = "scale"  # networks joined by the per-network measurement
IDLE_WINDOW = 1.0  # seconds of idling over which idle CPU is measured


def machine() -> dict[str, Any]:
    """Where the figures were taken: cores, CPU model, Python, kernel, date."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, in ticks per state: user, nice, system, idle, iowait,
    irq, softirq, steal (the `cpu` line of /proc/stat)."""
    return [int(field) for field in Path("/proc/stat").read_text().split()[1:9]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """Of the CPU time between two `cpu_ticks` readings, the share the hypervisor gave other
    guests (steal): one way a busy host shows, though not the only one (docs/performance.md)."""
    spent = [later - earlier for earlier, later in zip(before, after, strict=True)]
    return round(100 * spent[7] / max(1, sum(spent)), 1)


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, process: subprocess.Popen[Any]) -> None:
    """Return once 127.0.0.1:`port` accepts connections; RuntimeError if `process` died first."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.args!r} did not listen on {port}") from None
            time.sleep(0.05)


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `meshactors ARGS…` against `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHACTORS_")}
    return subprocess.run(
        [sys.executable, "-m", "meshactors", *args],
        env=env | {"MESHACTORS_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=check,
    )


@contextmanager
def running_daemon(home: Path) -> Iterator[tuple[int, Path]]:
    """`daemon up --detach` in `home`; yields (pid, socket); `daemon down` afterwards."""
    cli(home, "daemon", "up", "--detach")
    try:
        yield int((home / "daemon.pid").read_text().split()[0]), home / "daemon.sock"
    finally:
        cli(home, "daemon", "down", check=False)


@contextmanager
def running_broker() -> Iterator[str]:
    """A standalone `meshactors broker` on a free loopback port; yields its URL."""
    command = [sys.executable, "-m", "meshactors", "broker", "--listen", "127.0.0.1:{port}"]
    with server_on_free_port(command) as port:
        yield f"ws://127.0.0.1:{port}/v1"


@contextmanager
def server_on_free_port(command: list[str]) -> Iterator[int]:
    """Run `command` (with `{port}` filled in) until the block ends; yields the port once it
    accepts connections."""
    port = free_port()
    process = subprocess.Popen(
        [part.format(port=port) for part in command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def cold_start(runs: int) -> dict[str, Any]:
    """Wall time of `daemon up --detach` until the socket answers, each in a fresh home."""
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
            began = time.perf_counter()
            with running_daemon(Path(tmp)):
                samples.append(time.perf_counter() - began)
    summary = latency_summary(samples)
    return {"runs": runs, "p50_ms": summary["p50_us"] / 1000, "max_ms": max(samples) * 1000}


async def _status_round_trips(
    sock: Path, clients: int
) -> tuple[list[float], list[trio.SocketStream]]:
    """Connect `clients` raw connections, then one status round trip on each at the same moment.
    Returns the latencies and the still-open streams (idle clients for the RSS reading)."""
    streams: list[trio.SocketStream] = []
    with trio.fail_after(SETTLE_TIMEOUT):
        for start in range(0, clients, CONNECT_BATCH):
            async with trio.open_nursery() as nursery:
                for _ in range(start, min(clients, start + CONNECT_BATCH)):
                    nursery.start_soon(_connect_into, sock, streams)
    samples: list[float] = []
    go = trio.Event()

    async def one(stream: trio.SocketStream) -> None:
        await go.wait()
        began = time.perf_counter()
        try:
            await stream.send_all(b'{"id":1,"op":"status"}\n')
            answer = b""
            while not answer.endswith(b"\n"):
                answer += await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return  # counted as a failed client: clients minus samples
        samples.append(time.perf_counter() - began)

    with trio.fail_after(SETTLE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(one, stream)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
    return samples, streams


async def _connect_into(sock: Path, streams: list[trio.SocketStream]) -> None:
    streams.append(await trio.open_unix_socket(str(sock)))


def per_client(counts: list[int]) -> dict[str, Any]:
    """Daemon RSS with 0…N idle clients (each did one status), and the status latencies."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp, running_daemon(Path(tmp)) as daemon:
        pid, sock = daemon
        base = rss_kib(pid)
        for count in counts:

            async def measure(count: int = count) -> dict[str, Any]:
                samples, streams = await _status_round_trips(sock, count)
                cpu_before = cpu_seconds(pid)
                row: dict[str, Any] = {"clients": count, "rss_kib": rss_kib(pid)}
                for stream in streams:
                    await stream.aclose()
                row["status_rtt"] = latency_summary(samples) if samples else None
                row["failed_clients"] = count - len(samples)
                row["kib_per_client"] = round((row["rss_kib"] - base) / count, 1) if count else None
                row["close_cpu_s"] = round(cpu_seconds(pid) - cpu_before, 3)
                return row

            rows.append(trio.run(measure))
    return {"baseline_rss_kib": base, "rows": rows}


def per_network(counts: list[int]) -> dict[str, Any]:
    """Daemon RSS and idle CPU with 0…N networks joined on a local broker, each link up."""
    rows: list[dict[str, Any]] = []
    for count in counts:
        with (
            running_broker() as url,
            tempfile.TemporaryDirectory(prefix="scale-") as tmp,
            running_daemon(Path(tmp)) as (pid, sock),
        ):
            base = rss_kib(pid)
            trio.run(_join_networks, sock, url, count)
            cpu_before, began = cpu_seconds(pid), time.monotonic()
            time.sleep(IDLE_WINDOW)  # what keeping the networks costs when nothing flows
            idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - began)
            rss = rss_kib(pid)
            rows.append(
                {
                    "networks": count,
                    "rss_kib": rss,
                    "kib_per_network": round((rss - base) / count, 1) if count else None,
                    "idle_cpu_percent": round(idle_cpu * 100, 2),
                }
            )
    return {"rows": rows}


async def _join_networks(sock: Path, url: str, count: int) -> None:
    """Join `count` networks on `url` and wait until each one's link is up (phase alone)."""
    async with MeshClient(sock) as client:
        events = client.events()
        wanted = {f"{NETWORK_ID_PREFIX}{n}" for n in range(count)}
        for network in sorted(wanted):
            await client.call("network_add", {"config": {"id": network, "brokers": [url]}})
        with trio.fail_after(SETTLE_TIMEOUT):
            pending = set(wanted)
            for net in (await client.call("networks_list"))["networks"]:
                if net["phase"] != "connecting":
                    pending.discard(net["id"])
            if not pending:
                return
            async for event in events:
                if event["kind"] == "network_phase" and event["phase"] == "alone":
                    pending.discard(event["network"])
                if not pending:
                    break
