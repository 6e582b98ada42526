"""The swarm as processes: one broker process (or several sharing a Redis, the daemons' hosts
spread over them) and several host processes (swarmhost.py), each running many in-process
daemons, all in one network. Measures forming the full mesh, memory per
daemon, idle CPU, the cost of an advert to every peer, and the cost of one directed message (an
RPC round trip between two fixed daemons) as the network grows and as the networks joined grow.

CPU is utime+stime from /proc of every process involved (broker, hosts, the echo client and
this one). Each message figure has the idle background (keepalives, rtt probes) subtracted:
the idle rate is measured over its own window just before, and `idle_cpu_percent` reports it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from scripts.benchlib import meshbench, resources
from scripts.benchlib.baseline import ROOT, free_port
from scripts.benchlib.stats import latency_summary
from scripts.benchlib.swarm import FORM_TIMEOUT, ROUND_TIMEOUT

NETWORK = meshbench.NETWORK  # the swarm's network (where meshbench's RPC client calls)
HOSTS = 4  # host processes the daemons are spread over (round-robin), at most one per daemon
ANSWER_MARGIN = 60.0  # seconds a host may take beyond a command's own timeout to answer
START_TIMEOUT = 120.0  # seconds for a host to start its daemons (or to be ready at all)
RPC_BYTES = 128  # payload of one directed RPC round trip
WARMUP_RPCS = 20  # round trips before the measured ones (connections, caches)
BROKER_LOG = "broker{}.log"  # each broker's log in the swarm's root (errors are counted)


class HostFailed(RuntimeError):
    """A host process died or did not answer in time."""


@attrs.define(eq=False)
class HostProcess:
    """One swarmhost process and its JSON-line command channel."""

    process: subprocess.Popen[bytes]
    _buffer: bytes = b""

    @classmethod
    def spawn(cls, root: Path, size: int, index: int) -> HostProcess:
        log = (root / f"host{index}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts.benchlib.swarmhost", str(root), str(size)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        return cls(process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, op: str, **params: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **params}).encode() + b"\n")
        self.process.stdin.flush()

    def answer(self, timeout: float) -> dict[str, Any]:
        """The next answer line; HostFailed if the host exits or `timeout` passes first."""
        assert self.process.stdout is not None
        fd, deadline = self.process.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise HostFailed(f"host {self.pid} did not answer within {timeout:.0f} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise HostFailed(f"host {self.pid} exited ({self.process.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        """Close its commands (the host stops its daemons), then reap it."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@attrs.define(eq=False)
class Swarm:
    """Broker processes (their ports) and the host processes of `size` daemons, d0 first."""

    root: Path
    brokers: list[subprocess.Popen[bytes]]
    ports: list[int]
    hosts: list[HostProcess]
    devices: list[str] = attrs.field(factory=list)
    sockets: list[Path] = attrs.field(factory=list)

    @property
    def broker(self) -> subprocess.Popen[bytes]:
        return self.brokers[0]

    def join(self, networks: list[str], placement: list[int] | None = None) -> None:
        """Join every daemon of host n to `networks` through broker placement[n] (by default
        n mod brokers), auto-approving; does not wait for the peers."""
        for n, host in enumerate(self.hosts):
            broker = placement[n] if placement is not None else n % len(self.ports)
            host.send("join", networks=networks, url=f"ws://127.0.0.1:{self.ports[broker]}/v1")
        for host in self.hosts:  # a host's first daemons form while its last ones join
            host.answer(FORM_TIMEOUT)

    def routed(self) -> int:
        """Frames the brokers routed so far (their GET /health)."""
        total = 0
        for port in self.ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as got:
                total += json.load(got)["routed"]
        return total

    def everyone(self, op: str, wait: float, **params: Any) -> list[dict[str, Any]]:
        """Send one command to every host at once and collect their answers, waiting `wait`
        seconds (plus ANSWER_MARGIN) for each."""
        for host in self.hosts:
            host.send(op, **params)
        return [host.answer(wait + ANSWER_MARGIN) for host in self.hosts]

    def pids(self) -> list[int]:
        return [*self.broker_pids(), *(host.pid for host in self.hosts)]

    def broker_pids(self) -> list[int]:
        return [broker.pid for broker in self.brokers]

    def host_rss_kib(self) -> int:
        return sum(resources.rss_kib(host.pid) for host in self.hosts)

    def broker_errors(self) -> int:
        """Error lines the broker logged so far (e.g. connection_failed)."""
        errors = 0
        for n in range(len(self.brokers)):
            text = (self.root / BROKER_LOG.format(n)).read_text(errors="replace")
            errors += sum('"level": "error"' in line for line in text.splitlines())
        return errors


@contextmanager
def swarm_of(
    root: Path, size: int, hosts: int, brokers: int = 1, cluster: str | None = None
) -> Iterator[Swarm]:
    """Start `brokers` brokers (sharing the Redis at `cluster`, when given) and min(hosts, size)
    host processes with `size` daemons between them (daemon i on host i mod hosts); everything
    stops when the block ends. A network may hold every daemon of the swarm."""
    with ExitStack() as stack:
        ports, started_brokers = [], []
        for n in range(brokers):
            port = free_port()
            command = [sys.executable, "-m", "meshactors", "broker", "--log-json"]
            command += ["--listen", f"127.0.0.1:{port}", "--max-peers", str(max(size, 2))]
            # every daemon of the swarm connects from 127.0.0.1: all may reconnect at once
            command += ["--max-unhelloed-per-address", str(max(size, 2))]
            command += ["--cluster", cluster] if cluster is not None else []
            log = stack.enter_context((root / BROKER_LOG.format(n)).open("wb"))
            broker = subprocess.Popen(command, cwd=ROOT, stderr=log)
            stack.callback(_stop_process, broker)
            resources.wait_port(port, broker)
            ports.append(port)
            started_brokers.append(broker)
        started = [HostProcess.spawn(root, size, n) for n in range(min(hosts, size))]
        for host in started:
            stack.callback(host.stop)
        for host in started:
            host.answer(START_TIMEOUT)  # {"ready": true}
        yield Swarm(root, started_brokers, ports, started)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_daemons(swarm: Swarm, size: int) -> None:
    """Start daemon i on host i mod hosts; fills in devices and sockets in daemon order."""
    count = len(swarm.hosts)
    for n, host in enumerate(swarm.hosts):
        host.send("start", indices=list(range(n, size, count)))
    answers = [host.answer(START_TIMEOUT) for host in swarm.hosts]
    for index in range(size):
        answer = answers[index % count]
        swarm.devices.append(answer["devices"][index // count])
        swarm.sockets.append(Path(answer["sockets"][index // count]))


def broker_cpu(swarm: Swarm) -> float:
    """CPU seconds the swarm's brokers used so far."""
    return sum(resources.cpu_seconds(pid) for pid in swarm.broker_pids())


def cpu_total(pids: list[int]) -> float:
    """CPU seconds used so far by `pids` and by this process."""
    return sum(resources.cpu_seconds(pid) for pid in [*pids, os.getpid()])


@attrs.frozen
class Window:
    """CPU used by a set of processes over a stretch of wall time."""

    cpu_s: float
    wall_s: float

    @property
    def rate(self) -> float:
        return self.cpu_s / self.wall_s


@contextmanager
def measured(pids: list[int]) -> Iterator[list[Window]]:
    """Yields a list that holds the block's Window once the block ends."""
    box: list[Window] = []
    cpu, wall = cpu_total(pids), time.perf_counter()
    yield box
    box.append(Window(cpu_total(pids) - cpu, time.perf_counter() - wall))


def idle_window(pids: list[int], seconds: float) -> Window:
    """What the processes cost doing nothing for `seconds` (sleeping is the measurement)."""
    with measured(pids) as box:
        time.sleep(seconds)
    return box[0]


def net_cpu_us(window: Window, idle: Window, count: int) -> float:
    """CPU µs per item over `window`, less the idle rate over the same wall time."""
    return round((window.cpu_s - idle.rate * window.wall_s) / count * 1e6, 1)


def directed_rpcs(swarm: Swarm, pids: list[int], count: int, idle: Window) -> dict[str, Any]:
    """`count` sequential RPC round trips d0 → d1 (echo client on d1): latency and CPU each."""
    with meshbench.role("echo", str(swarm.sockets[1]), NETWORK) as echo:
        pids = [*pids, echo.pid]
        trio.run(meshbench.rpc_round_trips, swarm.sockets[0], swarm.devices[1], WARMUP_RPCS, 16)
        with measured(pids) as box:
            samples = trio.run(
                meshbench.rpc_round_trips, swarm.sockets[0], swarm.devices[1], count, RPC_BYTES
            )
    window = box[0]
    return {
        "rpcs": count,
        "rtt": latency_summary(samples),
        "cpu_us_per_rpc": net_cpu_us(window, idle, count),
        "cpu_us_per_rpc_gross": round(window.cpu_s / count * 1e6, 1),
    }


def measure_swarm(
    root: Path,
    size: int,
    rounds: int,
    idle_s: float,
    rpcs: int,
    brokers: int = 1,
    cluster: str | None = None,
) -> dict[str, Any]:
    """Start `size` daemons over the hosts (and the hosts over `brokers` brokers sharing the
    Redis at `cluster`), form the full mesh (auto-approve), idle, then `rounds` adverts from
    d0 to all and `rpcs` directed round trips d0 → d1."""
    with swarm_of(root, size, HOSTS, brokers, cluster) as swarm:
        base_rss = swarm.host_rss_kib()
        start_daemons(swarm, size)
        pids = swarm.pids()
        row: dict[str, Any] = {"daemons": size, "hosts": len(swarm.hosts), "brokers": brokers}
        brokers_cpu_s = broker_cpu(swarm)
        with measured(pids) as box:
            swarm.join([NETWORK])
            answers = swarm.everyone(
                "formed",
                FORM_TIMEOUT,
                networks=[NETWORK],
                peers=size - 1,
                timeout=FORM_TIMEOUT,
            )
        formed, sessions = all(a["formed"] for a in answers), sum(a["sessions"] for a in answers)
        row |= {
            "formed": formed,
            "active_sessions": sessions,
            "sessions_wanted": size * (size - 1),
            "mesh_formed_s": round(box[0].wall_s, 2),
            "form_cpu_s": round(box[0].cpu_s, 2),
            "kib_per_daemon": round((swarm.host_rss_kib() - base_rss) / size, 1),
            "broker_rss_kib": resources.rss_kib(swarm.broker.pid),
        }
        routed, broker_cpu_s = swarm.routed(), broker_cpu(swarm) - brokers_cpu_s
        row |= {
            "form_routed_frames": routed,
            "form_broker_cpu_s": round(broker_cpu_s, 2),
            "broker_cpu_us_per_routed_frame": round(broker_cpu_s / max(routed, 1) * 1e6, 1),
        }
        if not formed:
            return row | {"broker_errors": swarm.broker_errors()}
        idle = idle_window(pids, idle_s)
        row |= {
            "idle_cpu_percent": round(idle.rate * 100, 2),
            "idle_cpu_percent_per_daemon": round(idle.rate * 100 / size, 3),
        }
        sender = swarm.devices[0]
        with measured(pids) as box:
            for n in range(rounds):
                seen = swarm.everyone(
                    "advert",
                    ROUND_TIMEOUT,
                    network=NETWORK,
                    sender=sender,
                    tag=f"round{n}",
                    timeout=ROUND_TIMEOUT,
                )
                if not all(a["seen"] for a in seen):
                    raise HostFailed(f"advert round {n} did not reach every peer")
        row |= {
            "advert_rounds": rounds,
            "cpu_us_per_advert_delivery": net_cpu_us(box[0], idle, rounds * (size - 1)),
            "wall_ms_per_advert_to_all": round(box[0].wall_s / rounds * 1000, 2),
        }
        row["directed"] = directed_rpcs(swarm, pids, rpcs, idle)
        row["broker_errors"] = swarm.broker_errors()
        return row


def measure_networks(root: Path, networks: int, idle_s: float, rpcs: int) -> dict[str, Any]:
    """Two daemons (two hosts) both joined to `networks` networks on one broker: idle CPU, and
    the cost of a directed round trip in one of them."""
    joined = [NETWORK, *(f"{NETWORK}{n}" for n in range(1, networks))]
    with swarm_of(root, 2, 2) as swarm:
        start_daemons(swarm, 2)
        pids = swarm.pids()
        swarm.join(joined)
        answers = swarm.everyone(
            "formed", FORM_TIMEOUT, networks=joined, peers=1, timeout=FORM_TIMEOUT
        )
        if not all(a["formed"] for a in answers):
            raise HostFailed(f"the two daemons did not become active in all {networks} networks")
        idle = idle_window(pids, idle_s)
        return {
            "networks": networks,
            "idle_cpu_percent": round(idle.rate * 100, 2),
            "directed": directed_rpcs(swarm, pids, rpcs, idle),
        }
