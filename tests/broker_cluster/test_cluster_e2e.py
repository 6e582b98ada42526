"""Real processes from the CLI: three brokers sharing a real redis-server, daemons spread over
them. They join, approve, call, stream and fan out as in one broker; durable sends arrive once
through a broker killed with SIGKILL and through a Redis restart."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from meshactors.client import MeshClient, RequestContext
from meshactors.client.sync import SyncClient
from scripts.benchlib.redisserver import RedisServer, free_port
from tests.e2e.test_durable import inbox_all
from tests.e2e.test_mesh import DEADLINE, NET, accepting, eventually
from tests.support import Home

pytestmark = pytest.mark.e2e

UPPER = "import sys, json; print(json.dumps(json.load(sys.stdin).upper()))"
ACK_TIMEOUT_S = "2"  # durable sends dropped when a broker dies go again after this


@attrs.define
class Cluster:
    """Brokers as processes (`meshactors broker --cluster`), their logs in `directory`."""

    redis: RedisServer
    directory: Path
    ports: list[int] = attrs.field(factory=list)
    processes: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    def start(self, count: int) -> None:
        for _ in range(count):
            port = free_port()
            log = (self.directory / f"broker-{port}.log").open("wb")
            command = [sys.executable, "-m", "meshactors", "broker", "--log-json"]
            command += ["--listen", f"127.0.0.1:{port}", "--cluster", self.redis.url]
            self.processes.append(subprocess.Popen(command, stderr=log))
            self.ports.append(port)
            eventually(lambda port=port: accepting(port), f"the broker on port {port}")

    def urls(self, *first: int) -> list[str]:
        """Every broker's URL, those at the indexes `first` first (a daemon's order)."""
        order = list(first) + [i for i in range(len(self.ports)) if i not in first]
        return [f"ws://127.0.0.1:{self.ports[i]}/v1" for i in order]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=DEADLINE)


@pytest.fixture
def cluster(redis: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(redis, tmp_path)
    yield cluster
    cluster.stop()


@pytest.fixture
def four(tmp_path: Path) -> Iterator[list[Home]]:
    homes = [Home(tmp_path / name) for name in "abcd"]
    for home in homes:
        home.path.mkdir()
    yield homes
    for home in homes:
        home.stop_daemon()


def call(home: Home, op: str, **params: Any) -> Any:
    with SyncClient.connect(home.socket) as client:
        return client.call(op, **params)


def statuses(home: Home) -> dict[str, str]:
    peers = call(home, "peers_list", network=NET, all=True)["peers"]
    return {peer["device_id"]: peer["status"] for peer in peers}


def all_see(homes: list[Home], ids: list[str], status: str) -> bool | None:
    for home, me in zip(homes, ids, strict=True):
        seen = statuses(home)
        if any(seen.get(other) != status for other in ids if other != me):
            return None
    return True


def mesh(homes: list[Home], brokers: list[list[str]]) -> list[str]:
    """Start a daemon in each home, join NET through its broker list, wait until each sees
    every other pending, approve all, wait until all are active; their device ids."""
    ids = []
    for home, urls in zip(homes, brokers, strict=True):
        home.cli("daemon", "up", "--detach", "--ack-timeout", ACK_TIMEOUT_S)
        call(home, "network_add", config={"id": NET, "brokers": urls})
        ids.append(call(home, "status")["device_id"])
    eventually(lambda: all_see(homes, ids, "pending"), "every daemon to see the others")
    for home, me in zip(homes, ids, strict=True):
        for other in ids:
            if other != me:
                call(home, "roster_approve", network=NET, device_id=other)
    eventually(lambda: all_see(homes, ids, "active"), "every daemon to see the others active")
    return ids


def started(process: subprocess.Popen[str], stream: str) -> str:
    pipe = process.stderr if stream == "stderr" else process.stdout
    assert pipe is not None
    return pipe.readline()


async def test_four_daemons_on_three_brokers_work_as_one_mesh(
    cluster: Cluster, four: list[Home]
) -> None:
    cluster.start(3)
    a, b, c, d = four
    ids = await trio.to_thread.run_sync(
        mesh, four, [cluster.urls(0), cluster.urls(1), cluster.urls(2), cluster.urls(0)]
    )
    run = trio.to_thread.run_sync

    server = b.popen("rpc", "serve", "-n", NET, "upper", "--", sys.executable, "-c", UPPER)
    try:
        with trio.fail_after(DEADLINE):
            assert (await run(started, server, "stderr")).startswith("serving")
            answer = await run(functools.partial(a.cli, "rpc", "call", ids[1], "upper", '"abc"'))
        assert json.loads(answer.stdout) == "ABC"
    finally:
        server.kill()
        server.wait()

    async def count(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        for n in range(payload):
            yield n

    async with MeshClient(c.socket) as client:
        await client.serve(NET, "count", count)
        with trio.fail_after(DEADLINE):
            streamed = await run(
                functools.partial(a.cli, "rpc", "call", NET, ids[2], "count", "5", "--stream")
            )
    assert [json.loads(line) for line in streamed.stdout.splitlines()] == [0, 1, 2, 3, 4]

    sent = await run(functools.partial(a.cli, "channel", "send", NET, "news", "--retain", "7"))
    assert sorted(json.loads(sent.stdout)["dispatched_to"]) == sorted(ids[1:])
    for home in (b, c, d):
        reader = home.popen("channel", "subscribe", "news")
        try:
            with trio.fail_after(DEADLINE):
                got = json.loads(await run(started, reader, "stdout"))
            assert (got["from"], got["payload"]) == (ids[0], 7)
        finally:
            reader.kill()
            reader.wait()

    accepted = await run(
        functools.partial(call, d, "send", network=NET, to=ids[1], message="durable")
    )
    assert accepted["outcome"] == "accepted"
    message = await run(
        functools.partial(eventually, lambda: inbox_all(b) or None, "b to receive it")
    )
    assert [(m["from"], m["message"]) for m in message] == [(ids[3], "durable")]


def received(home: Home, count: int) -> list[str] | None:
    bodies = [m["message"] for m in inbox_all(home)]
    return bodies if len(bodies) >= count else None


def test_durable_sends_arrive_once_through_a_broker_kill_and_a_redis_restart(
    cluster: Cluster, four: list[Home]
) -> None:
    cluster.start(3)
    a, b = four[:2]
    ids = mesh([a, b], [cluster.urls(0, 2), cluster.urls(1)])  # a: 0, then 2; b: 1

    def send(first: int, last: int) -> None:
        for n in range(first, last):
            sent = call(a, "send", network=NET, to=ids[1], message=f"m{n}")
            assert sent["outcome"] == "accepted"

    send(0, 20)
    cluster.processes[0].send_signal(signal.SIGKILL)  # a's broker: a moves to the next URL
    send(20, 40)
    eventually(lambda: received(b, 40), "b to receive the first 40")
    eventually(lambda: all_see([a, b], ids, "active"), "a and b to be active again")
    (network,) = call(a, "networks_list")["networks"]
    assert network["broker"] == cluster.urls(2)[0]  # it moved to the next URL in its list

    cluster.redis.stop()  # a (now on broker 2) and b (on 1) are on different brokers
    send(40, 50)  # before the brokers notice: lost in the outage, each waits out a backoff
    eventually(lambda: all_see([a, b], ids, "offline"), "a and b to see each other left")
    send(50, 60)  # they wait in a's outbox, using up no attempts
    cluster.redis.start()  # b active again: what waits out a backoff for it goes at once
    eventually(lambda: all_see([a, b], ids, "active"), "a and b to be active after Redis")
    send(60, 80)
    bodies = eventually(lambda: received(b, 80), "b to receive all 80")
    assert sorted(bodies) == sorted(f"m{n}" for n in range(80))  # each once
