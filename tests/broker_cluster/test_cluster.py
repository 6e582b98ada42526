"""Brokers sharing a real redis-server, in one trio run: presence, routing, nonces, the peer
limit and a device on two brokers, across brokers; health; a Redis outage."""

import contextlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import coredis
import pytest
import structlog
import trio
from nacl.signing import SigningKey
from structlog.typing import EventDict

from meshactors.broker.cluster import COMMAND_TIMEOUT_S, LEFT_ALIVE, ClusterLink
from meshactors.broker.cluster_messages import ClusterEvent, Control, Forward, StateChanged
from meshactors.broker.cluster_wire import alive_key
from meshactors.broker.limits import BrokerConfig
from meshactors.broker.server import Broker
from meshactors.cli.common import EXIT_USAGE
from meshactors.clock import wall_ms
from meshactors.wire.broker import build_hello, encode_batch
from meshactors.wire.device_id import device_id_from_public_key
from scripts.benchlib.redisserver import RedisServer, free_port
from tests.broker.support import (
    WAIT_S,
    closed_with,
    connect,
    drained_to_close,
    hello,
    joined,
    left,
    next_batch,
    next_text,
)

ALICE, BOB, CAROL, DAVE = (SigningKey(bytes([seed]) * 32) for seed in (11, 12, 13, 14))


def pk(key: SigningKey) -> bytes:
    return key.verify_key.encode()


def did(key: SigningKey) -> str:
    return device_id_from_public_key(pk(key))


async def start(
    nursery: trio.Nursery, redis: RedisServer | None, **config: Any
) -> tuple[Broker, int]:
    broker = Broker(BrokerConfig(**config), None if redis is None else redis.url)
    port: int = await nursery.start(broker.serve, "127.0.0.1", 0)
    if redis is not None:
        await state_is(broker, "connected")
    return broker, port


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1"


async def get_health(port: int) -> dict[str, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: application/json" in head.lower()
    health: dict[str, Any] = json.loads(body)
    return health


async def state_is(broker: Broker, state: str) -> None:
    with trio.fail_after(WAIT_S * 4):
        await broker.reach_state(state)


def joins(device_id: str) -> Any:
    return lambda notice: notice.get("event") == "join" and notice["device_id"] == device_id


async def test_members_of_two_brokers_see_each_other_and_exchange_frames(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    a, a_port = await start(nursery, redis)
    b, b_port = await start(nursery, redis)
    async with joined(url(a_port), ALICE, "net") as (alice, welcome):
        assert welcome["peers"] == []
        async with joined(url(b_port), BOB, "net", "viewer") as (bob, welcome):
            assert welcome["peers"] == [{"device_id": did(ALICE), "role": "daemon"}]
            notice = await next_text(alice, joins(did(BOB)))
            assert notice["role"] == "viewer"
            await alice.send_message(encode_batch([(pk(BOB), b"one"), (pk(BOB), b"two")]))
            assert await next_batch(bob) == [(pk(ALICE), b"one"), (pk(ALICE), b"two")]
            await bob.send_message(encode_batch([(pk(ALICE), b"back")]))
            assert await next_batch(alice) == [(pk(BOB), b"back")]
        await next_text(alice, left(did(BOB)))
    assert a.figures()["frames_forwarded"] == 2 and b.figures()["frames_forwarded"] == 1
    assert b.figures()["cluster_delivered"] == 1
    health = await get_health(b_port)
    assert health["cluster"] == "connected" and health["routed"] == 1


async def test_a_hello_replayed_to_another_broker_is_refused(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    _, a_port = await start(nursery, redis)
    b, b_port = await start(nursery, redis)
    text = hello(ALICE, "net")
    async with connect(url(a_port)) as first:
        await first.send_message(text)
        await next_text(first, lambda notice: notice["type"] == "welcome")
        async with connect(url(b_port)) as replay:
            await replay.send_message(text)
            closed = await closed_with(replay)
    assert (closed.code, closed.reason) == (4401, "replayed_nonce")
    assert b.figures()["rejected_hello_replayed_nonce"] == 1


async def test_max_peers_counts_the_members_of_every_broker(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    _, a_port = await start(nursery, redis, max_peers=2)
    _, b_port = await start(nursery, redis, max_peers=2)
    async with (
        joined(url(a_port), ALICE, "net"),
        joined(url(b_port), BOB, "net"),
        connect(url(a_port)) as carol,
    ):
        await carol.send_message(hello(CAROL, "net"))
        closed = await closed_with(carol)
    assert (closed.code, closed.reason) == (4409, "network_full")


async def test_a_device_on_two_brokers_keeps_only_its_newer_connection(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    _, a_port = await start(nursery, redis)
    _, b_port = await start(nursery, redis)
    async with (
        joined(url(a_port), BOB, "net") as (bob, _),
        joined(url(a_port), ALICE, "net") as (old, _),
    ):
        await next_text(bob, joins(did(ALICE)))
        async with joined(url(b_port), ALICE, "net") as (new, welcome):
            assert welcome["peers"] == [{"device_id": did(BOB), "role": "daemon"}]
            closed = await drained_to_close(old)
            assert (closed.code, closed.reason) == (4409, "replaced")
            await next_text(bob, left(did(ALICE)))
            await next_text(bob, joins(did(ALICE)))
            await bob.send_message(encode_batch([(pk(ALICE), b"to the new one")]))
            assert await next_batch(new) == [(pk(BOB), b"to the new one")]


async def test_health_of_a_standalone_broker(nursery: trio.Nursery) -> None:
    broker, port = await start(nursery, None)
    async with joined(url(port), ALICE, "net"):
        health = await get_health(port)
    assert health["cluster"] == "standalone"
    assert (health["members"], health["networks"], health["routed"]) == (1, 1, 0)
    assert broker.figures()["health_requests"] == 1


async def test_a_broker_that_never_reached_redis_is_starting_not_degraded(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    """A health check reads a broker as not ready until it first reached Redis, `starting`
    (failed attempts included), where it said `degraded`, which is a lost Redis."""
    await trio.to_thread.run_sync(redis.stop)
    attempt_failed = trio.Event()

    def note_failure(_: object, __: str, event: EventDict) -> EventDict:
        if event["event"] == "cluster_degraded":
            attempt_failed.set()
        return event

    with structlog.testing.capture_logs(processors=[note_failure]):
        broker = Broker(BrokerConfig(), redis.url)
        port = await nursery.start(broker.serve, "127.0.0.1", 0)
        with trio.fail_after(WAIT_S):
            await attempt_failed.wait()
        assert (await get_health(port))["cluster"] == "starting"
        await trio.to_thread.run_sync(redis.start)
        await state_is(broker, "connected")
        await trio.to_thread.run_sync(redis.stop)
        await state_is(broker, "degraded")


async def test_brokers_route_locally_through_a_redis_outage_and_resync_after(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    a, a_port = await start(nursery, redis)
    b, b_port = await start(nursery, redis)
    async with (
        joined(url(a_port), ALICE, "net") as (alice, _),
        joined(url(a_port), BOB, "net") as (bob, _),
        joined(url(b_port), DAVE, "net") as (dave, _),
    ):
        await next_text(alice, joins(did(DAVE)))
        await trio.to_thread.run_sync(redis.stop)
        await next_text(alice, left(did(DAVE)))  # it cannot be reached: no sends into the void
        await next_text(dave, left(did(ALICE)))
        await state_is(a, "degraded")
        await state_is(b, "degraded")  # else B might admit Carol before it notices
        assert (await get_health(a_port))["cluster"] == "degraded"
        await alice.send_message(encode_batch([(pk(BOB), b"still here")]))
        assert await next_batch(bob) == [(pk(ALICE), b"still here")]
        await trio.to_thread.run_sync(redis.start)  # empty: the brokers register again
        await state_is(a, "connected")
        await state_is(b, "connected")
        await next_text(alice, joins(did(DAVE)))
        await next_text(dave, joins(did(ALICE)))
        async with joined(url(b_port), CAROL, "net") as (carol, welcome):
            peers = {peer["device_id"] for peer in welcome["peers"]}
            assert peers == {did(ALICE), did(BOB), did(DAVE)}  # A registered its members again
            await next_text(alice, joins(did(CAROL)))
            await carol.send_message(encode_batch([(pk(ALICE), b"across")]))
            assert await next_batch(alice) == [(pk(CAROL), b"across")]


async def test_members_of_a_killed_broker_leave_when_its_heartbeat_expires(
    nursery: trio.Nursery, redis: RedisServer, tmp_path: Path
) -> None:
    _, a_port = await start(nursery, redis, cluster_heartbeat=0.25, cluster_ttl=1.0)
    b_port = free_port()
    command = [sys.executable, "-m", "meshactors", "broker", "--listen", f"127.0.0.1:{b_port}"]
    command += ["--cluster", redis.url, "--cluster-heartbeat", "0.25", "--cluster-ttl", "1"]
    with (tmp_path / "b.log").open("wb") as log:
        b = await trio.lowlevel.open_process(command, stderr=log)
    try:
        async with joined(url(a_port), ALICE, "net") as (alice, _):
            with trio.fail_after(WAIT_S * 4):
                while True:  # the process is starting: its port answers once it serves
                    with contextlib.suppress(OSError):
                        if (await get_health(b_port))["cluster"] == "connected":
                            break
                    await trio.sleep(0.05)
            async with joined(url(b_port), BOB, "net"):
                await next_text(alice, joins(did(BOB)))
                b.kill()  # SIGKILL: no chance to say goodbye
                with trio.fail_after(WAIT_S * 4):
                    await next_text(alice, left(did(BOB)))
    finally:
        b.kill()
        await b.wait()


async def test_the_redis_password_is_never_logged(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    secret = redis.url.replace("redis://", "redis://default:s3cretPW@")  # nopass takes any
    with structlog.testing.capture_logs() as logs:
        broker = Broker(BrokerConfig(), secret)
        await nursery.start(broker.serve, "127.0.0.1", 0)
        await state_is(broker, "connected")
        await trio.to_thread.run_sync(redis.stop)
        await state_is(broker, "degraded")
    shown = {entry["event"]: entry["url"] for entry in logs if "url" in entry}
    assert shown == {"cluster_connected": redis.url, "cluster_degraded": redis.url}
    assert "s3cretPW" not in repr(logs)


def test_the_cluster_flag_wants_a_redis_url() -> None:
    command = [sys.executable, "-m", "meshactors", "broker", "--cluster", "http://h:1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_USAGE
    assert "--cluster must be a redis:// or rediss:// URL" in done.stderr


def test_a_refused_cluster_url_is_shown_without_its_password() -> None:
    command = [sys.executable, "-m", "meshactors", "broker", "--cluster", "http://u:s3cretPW@h:1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_USAGE
    assert "'http://h:1'" in done.stderr
    assert "s3cretPW" not in done.stderr


REDIS_PAUSE_MS = 60_000  # Redis holds writes this long, unless unpaused (once degraded)


@pytest.mark.parametrize("ttl", [1.0, 8.0], ids=["silent_subscription", "heartbeat_unanswered"])
async def test_an_outage_from_a_redis_that_stopped_answering_names_the_step(
    nursery: trio.Nursery, redis: RedisServer, ttl: float
) -> None:
    """A Redis that holds every write (CLIENT PAUSE WRITE: the heartbeat, its publish): the
    outage logged says which step went unanswered, not a bare TooSlowError."""
    with structlog.testing.capture_logs() as logs:
        broker, _ = await start(nursery, redis, cluster_heartbeat=0.25, cluster_ttl=ttl)
        async with coredis.Redis.from_url(redis.url) as client:
            await client.client_pause(REDIS_PAUSE_MS, coredis.PureToken.WRITE)
            try:
                await state_is(broker, "degraded")
            finally:
                await client.client_unpause()
    first = next(entry["error"] for entry in logs if entry["event"] == "cluster_degraded")
    assert re.fullmatch(r"TooSlowError: [a-z ]+: no answer from Redis within .*", first), first


async def test_a_re_registration_that_redis_never_answers_names_its_step(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    """A broker that finds its presence lost registers again; a Redis that holds writes from
    that moment on (CLIENT PAUSE WRITE, sent as the loss is logged) ends the session on the
    step's own deadline, named, rather than on coredis's bare stream timeout."""

    def pause_writes_on_loss(_: object, __: str, event: EventDict) -> EventDict:
        if event["event"] == "cluster_presence_lost":  # in the link's task: before it registers
            with socket.create_connection(("127.0.0.1", redis.port), timeout=WAIT_S) as paused:
                paused.sendall(_resp(b"CLIENT", b"PAUSE", b"%d" % REDIS_PAUSE_MS, b"WRITE"))
                assert paused.recv(16) == b"+OK\r\n"
        return event

    with structlog.testing.capture_logs(processors=[pause_writes_on_loss]) as logs:
        broker, _ = await start(nursery, redis, cluster_heartbeat=0.25)
        connected = next(entry for entry in logs if entry["event"] == "cluster_connected")
        try:
            await _redis_command(redis, b"DEL", alive_key(connected["broker_id"]).encode())
            await state_is(broker, "degraded")
        finally:
            await _redis_command(redis, b"CLIENT", b"UNPAUSE")
    first = next(entry["error"] for entry in logs if entry["event"] == "cluster_degraded")
    assert re.fullmatch(r"TooSlowError: re-register: .*", first), first


CLEAN_STOPS = 5  # stops of a connected broker; about half of them logged an outage


async def test_a_broker_stopped_while_connected_logs_no_outage(redis: RedisServer) -> None:
    """Operators alert on cluster_degraded: the errors coredis's tasks end in as a stop cancels
    them (ClosedResourceError) are the stop, not an outage."""
    with structlog.testing.capture_logs() as logs:
        for _ in range(CLEAN_STOPS):
            async with trio.open_nursery() as nursery:
                await start(nursery, redis)
                nursery.cancel_scope.cancel()
    assert [entry for entry in logs if entry["event"] == "cluster_degraded"] == []


async def test_a_broker_that_stops_removes_its_members_at_once(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    """Its members leave at once, and it logs its own departure (`cluster_left`), not a reap
    of itself: `cluster_reaped` names only brokers found dead."""
    stopping, b_stopped = trio.CancelScope(), trio.Event()

    async def serve_b(*, task_status: trio.TaskStatus[Broker]) -> None:
        with stopping:
            async with trio.open_nursery() as b_nursery:
                b, _ = await start(b_nursery, redis, cluster_ttl=3600.0)
                task_status.started(b)
        b_stopped.set()  # its leave is logged by now

    # capturing from before the first broker logs: a logger first used outside the capture
    # is cached with the real processors, and the capture would miss the rest
    with structlog.testing.capture_logs() as logs:
        _, a_port = await start(nursery, redis, cluster_ttl=3600.0)  # no reaping in this test
        async with joined(url(a_port), ALICE, "net") as (alice, _):
            b = await nursery.start(serve_b)
            b_port = int(str(b.figures()["listen"]).rsplit(":", 1)[1])
            async with joined(url(b_port), BOB, "net") as (bob, _):
                await next_text(alice, joins(did(BOB)))
                stopping.cancel()
                assert (await drained_to_close(bob)).reason == "going_away"
                await next_text(alice, left(did(BOB)))
        with trio.fail_after(WAIT_S):
            await b_stopped.wait()  # alice hears of the leave before b logs it
    b_id = b.health()["broker_id"]
    assert [e for e in logs if e["event"] == "cluster_reaped"] == []
    (left_log,) = [e for e in logs if e["event"] == "cluster_left"]
    assert (left_log["broker_id"], left_log["networks"]) == (b_id, 1)


async def test_a_broker_whose_leave_redis_holds_logs_that_it_failed(redis: RedisServer) -> None:
    """A Redis that answers the leave's connection but holds its writes (CLIENT PAUSE WRITE;
    as a reap of many networks outlasting its deadline) ends the leave at COMMAND_TIMEOUT_S,
    logged as failed and naming the step, where the broker used to say nothing."""
    with structlog.testing.capture_logs() as logs:
        async with coredis.Redis.from_url(redis.url) as client:
            try:
                with trio.fail_after(COMMAND_TIMEOUT_S + WAIT_S):
                    async with trio.open_nursery() as serving:
                        await start(serving, redis)
                        await client.client_pause(REDIS_PAUSE_MS, coredis.PureToken.WRITE)
                        serving.cancel_scope.cancel()
            finally:
                await client.client_unpause()
    assert [e for e in logs if e["event"] == "cluster_left"] == []
    (failed,) = [e for e in logs if e["event"] == "cluster_leave_failed"]
    assert (
        failed["error"] == f"TooSlowError: leave: no answer from Redis within {COMMAND_TIMEOUT_S} s"
    )


LEAVING_ID = "0123456789abcdef"  # the broker id of a link whose delete of its heartbeat is lost
STAND_IN_ID = "fedcba9876543210"  # the id whose heartbeat that delete removes instead (none)


async def _losing_deletes_of(
    key: bytes, redis: RedisServer, *, task_status: trio.TaskStatus[int]
) -> None:
    """A TCP proxy to `redis` on a free port (started with it) that turns each DEL of `key`
    into a DEL of STAND_IN_ID's heartbeat: `key` stays set, as when a renewal in flight sets
    it again right after the delete."""
    delete = _resp(b"DEL", key)
    stand_in = _resp(b"DEL", key.replace(LEAVING_ID.encode(), STAND_IN_ID.encode()))

    async def relay(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", redis.port) as upstream:

            async def down() -> None:
                async for data in upstream:
                    await client.send_all(data)

            async with trio.open_nursery() as pumps:
                pumps.start_soon(down)
                async for data in client:
                    # coredis writes each command whole, in one write
                    await upstream.send_all(stand_in if data == delete else data)
                pumps.cancel_scope.cancel()

    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as relays:
        task_status.started(listener.socket.getsockname()[1])
        await trio.serve_listeners(relay, [listener], handler_nursery=relays)


async def test_a_broker_whose_heartbeat_is_set_again_as_it_leaves_says_its_leave_failed(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    """Its reap of its own members stops as any reap stops on a broker found alive: it logs
    `cluster_leave_failed` saying so (LEFT_ALIVE), not `cluster_left` with no networks."""
    port = await nursery.start(_losing_deletes_of, alive_key(LEAVING_ID).encode(), redis)
    _, commands = trio.open_memory_channel[Control](2)
    _, forwards = trio.open_memory_channel[Forward](2)
    events, reported = trio.open_memory_channel[ClusterEvent](2)
    proxied = f"redis://127.0.0.1:{port}/0"
    link = ClusterLink(proxied, LEAVING_ID, 2.0, 3600.0, commands, forwards, events)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as serving:
            serving.start_soon(link.run)
            with trio.fail_after(WAIT_S):
                assert await reported.receive() == StateChanged("connected")
            serving.cancel_scope.cancel()
    assert [e for e in logs if e["event"] == "cluster_left"] == []
    (failed,) = [e for e in logs if e["event"] == "cluster_leave_failed"]
    assert failed["error"] == LEFT_ALIVE


async def test_members_joining_three_brokers_at_once_all_see_each_other(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    ports = [(await start(nursery, redis))[1] for _ in range(3)]
    keys = [SigningKey(bytes([100 + n]) * 32) for n in range(9)]
    everyone = {did(key) for key in keys}

    async def member(n: int, ready: trio.Event, done: trio.Event) -> None:
        async with joined(url(ports[n % 3]), keys[n], "net") as (ws, welcome):
            seen = {peer["device_id"] for peer in welcome["peers"]} | {did(keys[n])}
            while seen != everyone:
                seen.add(
                    (await next_text(ws, lambda notice: notice["type"] == "presence"))["device_id"]
                )
            ready.set()
            await done.wait()  # stay until every member saw every other

    done = trio.Event()
    readies = [trio.Event() for _ in keys]
    async with trio.open_nursery() as members:
        for n, ready in enumerate(readies):
            members.start_soon(member, n, ready, done)
        with trio.fail_after(WAIT_S * 4):
            for ready in readies:
                await ready.wait()
        done.set()


async def test_a_flood_across_brokers_waits_for_the_link_instead_of_dropping(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    a, a_port = await start(nursery, redis, cluster_forward_queue=1)
    _, b_port = await start(nursery, redis)
    count = 300
    async with (
        joined(url(a_port), ALICE, "net") as (alice, _),
        joined(url(b_port), BOB, "net") as (bob, _),
    ):
        await next_text(alice, joins(did(BOB)))
        for n in range(count):
            await alice.send_message(encode_batch([(pk(BOB), b"%d" % n)]))
        received: list[bytes] = []
        while len(received) < count:
            received += [sealed for _, sealed in await next_batch(bob)]
    assert received == [b"%d" % n for n in range(count)]
    assert a.figures()["frames_dropped"] == 0


def _resp(*words: bytes) -> bytes:
    """A Redis command as it goes on the wire."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


async def _redis_command(redis: RedisServer, *words: bytes) -> bytes:
    """One command to the test's Redis on a connection of its own; its raw answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", redis.port)
    async with stream:
        await stream.send_all(_resp(*words))
        with trio.fail_after(WAIT_S):
            return bytes(await stream.receive_some())


@pytest.mark.parametrize("where", ["same broker", "other broker"])
async def test_a_hello_older_than_the_devices_connection_is_refused_alone(
    nursery: trio.Nursery, redis: RedisServer, where: str
) -> None:
    a, a_port = await start(nursery, redis)
    _, b_port = await start(nursery, redis)
    newer_port = a_port if where == "same broker" else b_port
    stale = build_hello(ALICE, "net", "daemon", now_ms=wall_ms() - 5_000)  # say, a late retry
    async with (
        joined(url(a_port), BOB, "net") as (bob, _),
        joined(url(newer_port), ALICE, "net") as (alice, _),
    ):
        await next_text(bob, joins(did(ALICE)))
        async with connect(url(a_port)) as late:
            await late.send_message(stale)
            closed = await closed_with(late)
        assert (closed.code, closed.reason) == (4409, "replaced")
        await bob.send_message(encode_batch([(pk(ALICE), b"still you")]))
        assert await next_batch(alice) == [(pk(BOB), b"still you")]  # not closed, not left
        async with joined(url(a_port), CAROL, "net") as (_, welcome):
            assert did(ALICE) in {peer["device_id"] for peer in welcome["peers"]}
    assert a.figures()["closed_replaced"] == 1


async def test_the_last_member_leaving_keeps_the_mirror_for_a_hello_being_admitted(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    _, a_port = await start(nursery, redis)
    _, b_port = await start(nursery, redis)
    async with joined(url(b_port), DAVE, "net"):
        async with joined(url(a_port), BOB, "net") as (_, welcome):
            assert [peer["device_id"] for peer in welcome["peers"]] == [did(DAVE)]
            assert await _redis_command(redis, b"CLIENT", b"PAUSE", b"500", b"WRITE") == b"+OK\r\n"
            carol = await nursery.start(_hello_and_welcome, url(a_port), CAROL)
        await trio.testing.wait_all_tasks_blocked()  # Bob left a while Carol's hello waits
        with trio.fail_after(WAIT_S):
            welcome = await carol.receive()
        assert [peer["device_id"] for peer in welcome["peers"]] == [did(DAVE)]


async def _hello_and_welcome(
    address: str, key: SigningKey, *, task_status: trio.TaskStatus[Any]
) -> None:
    """Say hello at `address` and pass on the welcome once it comes (on the channel given);
    stay connected until cancelled."""
    send, receive = trio.open_memory_channel[dict[str, Any]](1)
    async with connect(address) as ws:
        await ws.send_message(hello(key, "net"))
        task_status.started(receive)
        await send.send(json.loads(await ws.get_message()))
        await trio.sleep_forever()


async def test_a_sender_is_told_undeliverable_when_no_broker_received_its_envelope(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    a, a_port = await start(nursery, redis)
    gone = "fedcba9876543210"  # died a moment ago: alive for a while yet, nobody reads its inbox
    entry = json.dumps({"b": gone, "r": "daemon", "t": wall_ms()}).encode()
    alive = (b"SET", f"meshactors:alive:{gone}".encode(), b"1", b"PX", b"60000")
    assert await _redis_command(redis, *alive) == b"+OK\r\n"
    assert await _redis_command(redis, b"HSET", b"meshactors:net:net", did(BOB).encode(), entry)
    async with joined(url(a_port), ALICE, "net") as (alice, welcome):
        assert welcome["peers"] == [{"device_id": did(BOB), "role": "daemon"}]
        await alice.send_message(encode_batch([(pk(BOB), b"into the void")]))
        notice = await next_text(alice, lambda notice: notice["type"] == "undeliverable")
        assert notice["device_id"] == did(BOB)
    assert a.figures()["cluster_undeliverable"] == 1
