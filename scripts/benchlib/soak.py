"""The soak for `scripts/chaos --soak MINUTES`: a broker and two daemons as processes under a
constant mixed load (RPC, channel, durable sends, connection churn), with a broker kill and a
daemon restart, sampled every minute.

It reports per minute each process's CPU time per message (process CPU, not wall time, so a
shared machine disturbs it least), RSS, open fds and actor counts; the RSS slope after
warm-up; and the data counts: durable messages exactly once, channel gaps, RPC errors by
code. PASS needs every durable message in the recipient's inbox exactly once and, for a run
of at least two CPU windows, the sender's and recipient's CPU per message in the last window
within CPU_BOUND of the first.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.actors import Lagged
from meshactors.client import ChannelGap, ClientError, MeshClient
from scripts.benchlib import chaos, resources
from scripts.benchlib.baseline import free_port

NETWORK = "soak"
METHOD = "echo"
CHANNEL = "ticks"
RPC_PER_S = 100  # round trips offered per second (A calls B)
RPC_IN_FLIGHT = 32  # more outstanding calls than this and a tick is shed, not queued
RPC_TIMEOUT_MS = 5000
CHANNEL_PER_S = 1000  # channel messages offered per second (A to every peer)
CHANNEL_BATCH = 50  # messages per channel_send_all request
DURABLE_PER_S = 20  # durable sends per second (A to B)
DURABLE_TRIES = 5  # a send that fails is retried with the same client_message_id
CHURN_PER_S = 1  # short-lived client connections per second (alternately A and B)
BROKER_KILL_AT = 0.40  # share of the run at which the broker is SIGKILLed…
BROKER_DOWN_S = 2.0  # …and restarted this much later on the same port
DAEMON_RESTART_AT = 0.55  # share of the run at which B is stopped and started again
WINDOW_MIN = 10.0  # minutes in each of the first and last CPU windows (shorter runs: a third)
WARMUP_MIN = 2.0  # minutes left out of the RSS slope (shorter runs: a fifth)
CPU_BOUND = 0.10  # last window's CPU per message within this share of the first's
DRAIN_TIMEOUT = 600.0  # seconds for the outbox to empty after the load stops


@attrs.define
class Counts:
    """What the load generators did and saw."""

    rpc_ok: int = 0
    rpc_shed: int = 0
    rpc_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    channel_sent: int = 0
    channel_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    channel_received: int = 0
    channel_gaps: int = 0  # messages skipped in the received sequence
    channel_lagged: int = 0
    channel_next: int = 0
    durable_sent: int = 0
    durable_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    churn: int = 0
    churn_errors: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def messages(self) -> int:
        """Messages offered and accepted so far: RPC round trips, channel and durable sends."""
        return self.rpc_ok + self.channel_sent + self.durable_sent


@attrs.define
class Sample:
    """One reading of every process and of the counters."""

    at_s: float
    messages: int
    procs: dict[str, dict[str, Any]]


@attrs.define
class Soak:
    """The running soak: homes, broker process, device ids, counters, samples."""

    root: Path
    port: int
    broker: subprocess.Popen[bytes]
    ids: dict[str, str] = attrs.field(factory=dict)
    counts: Counts = attrs.field(factory=Counts)
    samples: list[Sample] = attrs.field(factory=list)
    events: list[str] = attrs.field(factory=list)

    def home(self, name: str) -> Path:
        return self.root / name

    def pid(self, name: str) -> int | None:
        if name == "broker":
            return self.broker.pid if self.broker.poll() is None else None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.home(name) / "daemon.pid").read_text().split()[0])
        return None


def _fds(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return None


def _actors(tree: dict[str, Any]) -> int:
    return 1 + sum(_actors(child) for child in tree.get("children", []))


async def _reading(soak: Soak, clients: dict[str, MeshClient], began: float) -> Sample:
    procs: dict[str, dict[str, Any]] = {}
    for name in ("broker", "a", "b", "harness"):
        pid = os.getpid() if name == "harness" else soak.pid(name)
        if pid is None:
            continue
        try:
            reading: dict[str, Any] = {
                "pid": pid,
                "cpu_s": resources.cpu_seconds(pid),
                "rss_kib": resources.rss_kib(pid),
                "fds": _fds(pid),
            }
        except (OSError, ValueError):
            continue
        if name in clients:
            with contextlib.suppress(ClientError, trio.TooSlowError), trio.fail_after(5):
                reading["actors"] = _actors(await clients[name].inspect())
        procs[name] = reading
    return Sample(time.monotonic() - began, soak.counts.messages(), procs)


async def _paced(rate: float, stop: trio.Event) -> AsyncIterator[int]:
    """Tick numbers at `rate` per second against the clock, until `stop` (no catch-up burst
    after a stall: missed ticks are skipped)."""
    start, n = trio.current_time(), 0
    while not stop.is_set():
        yield n
        n += 1
        due = start + n / rate
        now = trio.current_time()
        if due < now:
            n = int((now - start) * rate)
        await trio.sleep_until(start + n / rate)


async def _rpc_load(soak: Soak, client: MeshClient, stop: trio.Event) -> None:
    counts, in_flight = soak.counts, 0

    async def one(n: int) -> None:
        nonlocal in_flight
        try:
            await client.rpc_call(NETWORK, soak.ids["b"], METHOD, n, timeout_ms=RPC_TIMEOUT_MS)
            counts.rpc_ok += 1
        except ClientError as error:
            counts.rpc_errors[error.code] += 1
        finally:
            in_flight -= 1

    async with trio.open_nursery() as nursery:
        async for n in _paced(RPC_PER_S, stop):
            if in_flight >= RPC_IN_FLIGHT:
                counts.rpc_shed += 1
                continue
            in_flight += 1
            nursery.start_soon(one, n)


async def _channel_load(soak: Soak, client: MeshClient, stop: trio.Event) -> None:
    counts, next_n = soak.counts, 0
    async for _ in _paced(CHANNEL_PER_S / CHANNEL_BATCH, stop):
        batch = [{"n": next_n + i} for i in range(CHANNEL_BATCH)]
        next_n += CHANNEL_BATCH
        try:
            await client.channel_send_many(NETWORK, CHANNEL, batch)
            counts.channel_sent += CHANNEL_BATCH
        except ClientError as error:
            counts.channel_errors[error.code] += 1


async def _channel_reader(
    soak: Soak, client: MeshClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    counts = soak.counts
    async with client.subscribe(NETWORK, CHANNEL) as messages:
        task_status.started()
        async for message in messages:
            if isinstance(message, Lagged):
                counts.channel_lagged += message.skipped
                continue
            if isinstance(message, ChannelGap):  # lagged, or the connection was lost
                counts.channel_lagged += message.skipped or 0
                continue
            n = message.payload["n"]
            counts.channel_received += 1
            if n > counts.channel_next:
                counts.channel_gaps += n - counts.channel_next
            counts.channel_next = max(counts.channel_next, n + 1)


async def _durable_load(soak: Soak, client: MeshClient, stop: trio.Event) -> None:
    counts = soak.counts
    async for _ in _paced(DURABLE_PER_S, stop):
        key = f"d{counts.durable_sent}"
        for _ in range(DURABLE_TRIES):
            try:
                await client.send(NETWORK, soak.ids["b"], key, client_message_id=key)
            except ClientError as error:
                counts.durable_errors[error.code] += 1
                continue
            counts.durable_sent += 1
            break


async def _churn(soak: Soak, stop: trio.Event) -> None:
    counts = soak.counts
    async for n in _paced(CHURN_PER_S, stop):
        try:
            async with MeshClient(soak.home("ab"[n % 2]) / "daemon.sock") as client:
                await client.call("status")
            counts.churn += 1
        except ClientError as error:
            counts.churn_errors[error.code] += 1


async def _faults(soak: Soak, seconds: float) -> None:
    await trio.sleep(seconds * BROKER_KILL_AT)
    soak.broker.kill()
    await trio.to_thread.run_sync(soak.broker.wait)
    soak.events.append(f"broker SIGKILLed at {seconds * BROKER_KILL_AT / 60:.1f} min")
    await trio.sleep(BROKER_DOWN_S)
    soak.broker = await trio.to_thread.run_sync(chaos._start_broker, soak.port)
    await trio.sleep(max(0.0, seconds * (DAEMON_RESTART_AT - BROKER_KILL_AT) - BROKER_DOWN_S))
    await trio.to_thread.run_sync(lambda: resources.cli(soak.home("b"), "daemon", "down"))
    await trio.to_thread.run_sync(lambda: resources.cli(soak.home("b"), "daemon", "up", "--detach"))
    soak.events.append(f"daemon b restarted at {seconds * DAEMON_RESTART_AT / 60:.1f} min")


async def _sampler(
    soak: Soak, clients: dict[str, MeshClient], began: float, interval: float, stop: trio.Event
) -> None:
    while True:
        soak.samples.append(await _reading(soak, clients, began))
        if len(soak.samples) > 1:
            print(_minute_line(soak.samples[-2], soak.samples[-1], soak.counts), flush=True)
        if stop.is_set():
            return
        with trio.move_on_after(interval):
            await stop.wait()


def _minute_line(before: Sample, after: Sample, counts: Counts) -> str:
    messages = after.messages - before.messages
    parts = [f"t={after.at_s / 60:5.1f} min msgs={messages}"]
    for name, cost in _costs(before, after).items():
        proc = after.procs[name]
        shown = "restart" if cost is None else f"{cost:.0f} µs/msg"
        parts.append(f"{name}: {shown} rss={proc['rss_kib'] // 1024} MiB fds={proc['fds']}")
    parts.append(f"rpc_err={sum(counts.rpc_errors.values())} gaps={counts.channel_gaps}")
    return "  ".join(parts)


def _costs(before: Sample, after: Sample) -> dict[str, float | None]:
    """Each process's CPU µs per message between two samples (None: it restarted between)."""
    messages = max(1, after.messages - before.messages)
    costs: dict[str, float | None] = {}
    for name, proc in after.procs.items():
        earlier = before.procs.get(name)
        if earlier is None or earlier["pid"] != proc["pid"]:
            costs[name] = None
        else:
            costs[name] = (proc["cpu_s"] - earlier["cpu_s"]) * 1e6 / messages
    return costs


def _window_cost(samples: list[Sample], name: str) -> float | None:
    """CPU µs per message of `name` over consecutive samples, skipping intervals it restarted."""
    cpu = messages = 0.0
    for before, after in itertools.pairwise(samples):
        proc, earlier = after.procs.get(name), before.procs.get(name)
        if proc is None or earlier is None or proc["pid"] != earlier["pid"]:
            continue
        cpu += proc["cpu_s"] - earlier["cpu_s"]
        messages += after.messages - before.messages
    return None if not messages else cpu * 1e6 / messages


def _slope(samples: list[Sample], name: str, since_s: float) -> float | None:
    """Least-squares RSS slope of `name` in KiB per minute over samples after `since_s`, on
    its last process only (a restart starts a new one)."""
    points = [
        (s.at_s / 60, s.procs[name]["rss_kib"])
        for s in samples
        if name in s.procs
        and s.at_s >= since_s
        and s.procs[name]["pid"] == _last_pid(samples, name)
    ]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return None if not spread else sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _last_pid(samples: list[Sample], name: str) -> int | None:
    return next((s.procs[name]["pid"] for s in reversed(samples) if name in s.procs), None)


async def _drained(client: MeshClient) -> None:
    """Return once the sender's outbox has nothing pending or in flight."""
    with trio.fail_after(DRAIN_TIMEOUT):
        while True:
            tree = await client.inspect()
            outbox = next(c for c in tree["children"] if c["name"] == "outbox")["figures"]
            if outbox["pending"] == 0 and outbox["inflight"] == 0:
                return
            await trio.sleep(0.5)


@contextlib.contextmanager
def _processes(root: Path) -> Iterator[Soak]:
    port = free_port()
    soak = Soak(root, port, chaos._start_broker(port))
    try:
        for name in ("a", "b"):
            soak.home(name).mkdir()
            resources.cli(soak.home(name), "daemon", "up", "--detach")
        yield soak
    finally:
        for name in ("a", "b"):
            resources.cli(soak.home(name), "daemon", "down", check=False)
        if soak.broker.poll() is None:
            soak.broker.send_signal(signal.SIGTERM)
            soak.broker.wait(timeout=10)


async def _soak(minutes: float) -> chaos.Verdict:
    seconds = minutes * 60
    interval = 60.0 if minutes >= 3 else max(1.0, seconds / 6)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, _processes(Path(tmp)) as soak:
        url = f"ws://127.0.0.1:{soak.port}/v1"
        clients: dict[str, MeshClient] = {}
        async with contextlib.AsyncExitStack() as stack:
            for name in ("a", "b"):
                client = MeshClient(soak.home(name) / "daemon.sock")
                clients[name] = await stack.enter_async_context(client)
                config = {"id": NETWORK, "brokers": [url], "auto_approve": True}
                await client.call("network_add", {"config": config})
                soak.ids[name] = (await client.call("status"))["device_id"]
            await chaos._until_active(clients["a"], NETWORK, soak.ids["b"])
            await clients["b"].serve(NETWORK, METHOD, _echo)
            stop, sampled = trio.Event(), trio.Event()
            began = time.monotonic()
            async with trio.open_nursery() as nursery:
                await nursery.start(_channel_reader, soak, clients["b"])
                async with trio.open_nursery() as load:
                    load.start_soon(_rpc_load, soak, clients["a"], stop)
                    load.start_soon(_channel_load, soak, clients["a"], stop)
                    load.start_soon(_durable_load, soak, clients["a"], stop)
                    load.start_soon(_churn, soak, stop)
                    load.start_soon(_sampler, soak, clients, began, interval, sampled)
                    load.start_soon(_faults, soak, seconds)
                    await trio.sleep(seconds)
                    sampled.set()
                    stop.set()
                    load.cancel_scope.deadline = trio.current_time() + 30  # faults, stragglers
                await _drained(clients["a"])
                stored = await chaos.inbox_all(clients["b"])
                nursery.cancel_scope.cancel()
    return _verdict(soak, minutes, stored)


async def _echo(payload: Any, context: Any) -> Any:
    return payload


def _verdict(soak: Soak, minutes: float, stored: list[dict[str, Any]]) -> chaos.Verdict:
    counts, samples = soak.counts, soak.samples
    keys = collections.Counter(m["client_message_id"] for m in stored)
    expected = {f"d{n}" for n in range(counts.durable_sent)}
    once = set(keys) == expected and all(n == 1 for n in keys.values())
    window = min(WINDOW_MIN, minutes / 3) * 60
    first = [s for s in samples if s.at_s <= window + 1]
    last = [s for s in samples if s.at_s >= samples[-1].at_s - window - 1]
    cpu: dict[str, dict[str, float | None]] = {}
    for name in ("broker", "a", "b", "harness"):
        before, after = _window_cost(first, name), _window_cost(last, name)
        ratio = None if not before or after is None else after / before
        cpu[name] = {"first_us": before, "last_us": after, "ratio": ratio}
    warmup = min(WARMUP_MIN, minutes / 5) * 60
    slopes = {name: _slope(samples, name, warmup) for name in ("broker", "a", "b")}
    enforced = minutes >= 2 * WINDOW_MIN
    flat = all(
        (r := cpu[name]["ratio"]) is not None and abs(r - 1) <= CPU_BOUND for name in ("a", "b")
    )
    ok = once and (flat or not enforced)
    ratios = ", ".join(
        f"{name} {c['ratio']:.2f}" for name, c in cpu.items() if c["ratio"] is not None
    )
    detail = (
        f"{minutes:g} min: durable {len(stored)} stored of {counts.durable_sent} sent, "
        f"{'exactly once' if once else 'NOT exactly once'}; CPU/msg last/first window: "
        f"{ratios}{'' if enforced else ' (not judged: shorter than two windows)'}; "
        f"channel gaps {counts.channel_gaps} of {counts.channel_sent}; "
        f"RPC ok {counts.rpc_ok}, errors {dict(counts.rpc_errors)}"
    )
    return chaos._verdict(
        "soak",
        ok,
        detail,
        minutes=minutes,
        faults=soak.events,
        durable={"sent": counts.durable_sent, "stored": len(stored), "exactly_once": once},
        durable_errors=dict(counts.durable_errors),
        channel={
            "sent": counts.channel_sent,
            "received": counts.channel_received,
            "gaps": counts.channel_gaps,
            "lagged": counts.channel_lagged,
            "errors": dict(counts.channel_errors),
        },
        rpc={"ok": counts.rpc_ok, "shed": counts.rpc_shed, "errors": dict(counts.rpc_errors)},
        churn={"ok": counts.churn, "errors": dict(counts.churn_errors)},
        cpu_us_per_msg=cpu,
        rss_slope_kib_per_min=slopes,
        minutes_table=[
            {
                "t_min": round(after.at_s / 60, 2),
                "messages": after.messages - before.messages,
                "cpu_us_per_msg": {
                    k: None if v is None else round(v, 1) for k, v in _costs(before, after).items()
                },
                "rss_kib": {k: p["rss_kib"] for k, p in after.procs.items()},
                "fds": {k: p["fds"] for k, p in after.procs.items()},
                "actors": {k: p.get("actors") for k, p in after.procs.items() if "actors" in p},
            }
            for before, after in itertools.pairwise(samples)
        ],
    )


def run_soak(minutes: float) -> chaos.Verdict:
    """Run the soak for `minutes`; any exception is a FAIL."""
    try:
        return trio.run(_soak, minutes)
    except Exception as exc:
        return chaos.Verdict("soak", "FAIL", f"{type(exc).__name__}: {exc}")
