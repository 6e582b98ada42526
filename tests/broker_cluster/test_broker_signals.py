"""A foreground `meshactors broker --cluster` process stops cleanly on a stop signal, SIGHUP
(its terminal closed) included: exit 0, the signal logged, and its keys removed from Redis at
once rather than left to expire; started under `nohup`, it keeps ignoring SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import coredis
import pytest
import trio

from meshactors.broker.cluster_wire import BROKERS_KEY, alive_key
from scripts.benchlib.redisserver import RedisServer

pytestmark = pytest.mark.e2e

BROKER_STOP_WAIT_S = 30  # bound for a broker process to start, and to stop after the signal


async def cluster_broker(
    redis: RedisServer, preexec_fn: Callable[[], None] | None = None
) -> tuple[trio.Process, bytes, str]:
    """A foreground `broker --cluster` on a free port, what it logged until Redis answered it,
    and its broker id (from that `cluster_connected` line)."""
    command = [sys.executable, "-m", "meshactors", "broker", "--log-json", "--listen"]
    command += ["127.0.0.1:0", "--cluster", redis.url]
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, preexec_fn=preexec_fn
    )
    assert process.stderr is not None
    log = b""
    while True:
        for line in log.splitlines(keepends=True):
            event = json.loads(line) if line.endswith(b"\n") else {}
            if event.get("event") == "cluster_connected":
                return process, log, event["broker_id"]
        chunk = await process.stderr.receive_some(4096)
        assert chunk, f"the broker exited before Redis answered it: {log.decode()}"
        log += chunk


async def broker_log_to_its_end(process: trio.Process, log: bytes) -> list[dict[str, Any]]:
    """The events a broker logged, once it exited (status 0: asserted)."""
    assert process.stderr is not None
    while chunk := await process.stderr.receive_some(4096):
        log += chunk
    assert await process.wait() == 0, log.decode()
    return [json.loads(line) for line in log.splitlines()]


async def registered(redis: RedisServer, broker_id: str) -> tuple[bool, bool]:
    """Whether `broker_id`'s heartbeat key is in Redis, and whether the brokers set lists it."""
    async with coredis.Redis.from_url(redis.url) as client:
        alive = await client.exists([alive_key(broker_id)])
        listed = await client.sismember(BROKERS_KEY, broker_id)
    return alive == 1, bool(listed)


@pytest.mark.parametrize("stop", [signal.SIGHUP, signal.SIGTERM], ids=["sighup", "sigterm"])
async def test_a_stop_signal_makes_a_cluster_broker_leave_redis_and_exit_0(
    redis: RedisServer, stop: signal.Signals
) -> None:
    with trio.fail_after(BROKER_STOP_WAIT_S):
        process, log, broker_id = await cluster_broker(redis)
        try:
            assert await registered(redis, broker_id) == (True, True)
            process.send_signal(stop)  # SIGHUP: the terminal of a foreground `broker` closed
            events = await broker_log_to_its_end(process, log)
        finally:
            process.kill()
    assert any(e["event"] == "stop signal" and e["signal"] == stop.name for e in events)
    assert not any(e["event"] == "cluster_degraded" for e in events)  # a stop, no outage
    assert await registered(redis, broker_id) == (False, False)  # left, not left to expire


def ignoring_broker_hangups() -> None:
    """`preexec_fn` that starts a child as `nohup` does: with SIGHUP ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def test_a_broker_started_with_sighup_ignored_keeps_ignoring_it(redis: RedisServer) -> None:
    """Under `nohup` a closed terminal leaves the broker running: an ignored SIGHUP is dropped
    when sent, so only the SIGTERM after it is logged as the stop signal."""
    with trio.fail_after(BROKER_STOP_WAIT_S):
        process, log, _ = await cluster_broker(redis, preexec_fn=ignoring_broker_hangups)
        try:
            process.send_signal(signal.SIGHUP)
            process.send_signal(signal.SIGTERM)
            events = await broker_log_to_its_end(process, log)
        finally:
            process.kill()
    assert [e["signal"] for e in events if e["event"] == "stop signal"] == ["SIGTERM"]
