"""MeshClient against an in-process daemon: calls by id, errors, deadlines, connecting, shared
bring-up, events, and resuming the event stream across a daemon restart."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.client import (
    ClientError,
    DaemonNotRunning,
    DeadlineExceeded,
    EventStream,
    MeshClient,
    SocketPathTooLong,
)
from meshactors.store import events as event_log
from meshactors.store.db import open_database
from meshactors.store.events import Event
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS
from tests.client.conftest import NETWORK, LocalDaemon
from tests.support import publish


async def next_kind(stream: EventStream, kind: str) -> dict[str, Any]:
    """The next event of `kind` (others are skipped)."""
    async for event in stream:
        if event["kind"] == kind:
            return event
    raise AssertionError(f"the stream ended before a {kind!r} event")


async def take_kinds(stream: EventStream, wanted: dict[str, int]) -> list[dict[str, Any]]:
    """The next events of the `wanted` kinds, as many of each as asked, in the order they came
    (others are skipped)."""
    left, taken = dict(wanted), []
    async for event in stream:
        if left.get(event["kind"], 0) > 0:
            left[event["kind"]] -= 1
            taken.append(event)
            if not any(left.values()):
                return taken
    raise AssertionError(f"the stream ended before the events {left!r}")


async def test_calls_answer_by_id_and_many_run_at_once(running: LocalDaemon) -> None:
    assert running.services is not None
    async with MeshClient(running.paths.socket) as client:
        results: list[Any] = []

        async def status() -> None:
            results.append(await client.status())

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(MAX_CONCURRENT_REQUESTS * 3):  # more than the daemon takes at once
                    nursery.start_soon(status)
        assert len(results) == MAX_CONCURRENT_REQUESTS * 3
        assert {r["device_id"] for r in results} == {running.services.identity.device_id}
        assert {r["client_id"] for r in results} == {"c1"}  # all on one connection


async def test_error_answers_raise_with_the_daemon_code(running: LocalDaemon) -> None:
    async with MeshClient(running.paths.socket) as client:
        with pytest.raises(ClientError) as unknown:
            await client.call("no_such_op")
        assert unknown.value.code == "unknown_op"
        with pytest.raises(ClientError) as invalid:
            await client.call("status", {"surprise": 1})
        assert invalid.value.code == "invalid_params"
        assert "surprise" in invalid.value.message
        assert (await client.version())["ipc_api"] == 1  # the connection is still fine


async def test_no_daemon_is_a_clear_error_after_the_connect_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    socket = tmp_path / "daemon.sock"
    started = trio.current_time()
    with pytest.raises(DaemonNotRunning) as failure:
        async with MeshClient(socket, connect_timeout=10):
            pass
    assert trio.current_time() - started == pytest.approx(10, abs=1.01)
    assert failure.value.code == "not_running"
    assert str(socket) in str(failure.value)
    assert "meshactors daemon up" in str(failure.value)


async def test_a_socket_path_too_long_is_said_at_once_not_retried(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    socket = tmp_path / ("s" * 120)
    started = trio.current_time()
    with pytest.raises(SocketPathTooLong) as failure:
        async with MeshClient(socket, connect_timeout=10):
            pass
    assert trio.current_time() == started  # no daemon could ever answer there
    assert failure.value.code == "not_running"
    assert str(failure.value) == (
        f"not_running: no daemon answers on {socket} (the path is "
        f"{len(os.fsencode(socket))} bytes, longer than the 107 a Unix socket's may be); "
        "use a shorter MESHACTORS_HOME, or --socket PATH"
    )


async def test_a_silent_daemon_hits_the_call_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    socket = tmp_path / "silent.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(socket))
    listener.listen()
    with listener, pytest.raises(DeadlineExceeded) as failure:
        async with MeshClient(socket, connect_timeout=1, call_timeout=3):
            pass  # the bring-up's events_subscribe is never answered
    assert failure.value.code == "deadline"


async def test_the_client_waits_for_a_daemon_that_starts_later(local: LocalDaemon) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            connected = trio.Event()

            async def client_first() -> None:
                async with MeshClient(local.paths.socket, connect_timeout=15) as client:
                    assert (await client.status())["clients"] == 1
                    connected.set()

            nursery.start_soon(client_first)
            await trio.testing.wait_all_tasks_blocked()  # it is retrying: no socket yet
            assert not connected.is_set()
            await local.start()
    assert connected.is_set()


async def test_concurrent_starts_share_one_bring_up(local: LocalDaemon) -> None:
    client = MeshClient(local.paths.socket, connect_timeout=15)
    done = trio.Event()
    starts_returned = 0

    async def hold_open() -> None:
        async with client:
            await done.wait()

    async def start_again() -> None:
        nonlocal starts_returned
        await client.start()
        starts_returned += 1

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold_open)
            await trio.testing.wait_all_tasks_blocked()  # the first start is retrying
            async with trio.open_nursery() as starters:
                for _ in range(5):
                    starters.start_soon(start_again)
                await trio.testing.wait_all_tasks_blocked()
                await local.start()
            status = await client.status()
            done.set()
    assert starts_returned == 5
    assert status["clients"] == 1  # one connection, one events_subscribe (a second: conflict)


async def test_events_reach_every_reader_in_order(running: LocalDaemon) -> None:
    assert running.services is not None
    hub = running.services.events
    async with MeshClient(running.paths.socket) as client:
        first, second = client.events(), client.events()
        published = [
            e.event_id for e in await publish(hub, "test_event", *({"n": n} for n in range(5)))
        ]
        with trio.fail_after(5):
            for stream in (first, second):
                seen = [(await next_kind(stream, "test_event"))["n"] for _ in range(5)]
                assert seen == list(range(5))
        assert client.last_event_id == published[-1]


def append_events(db: Path, count: int) -> list[int]:
    """Log events straight into a stopped daemon's database, as if a run of it had published
    them now (an event from 1970 would be past retention and pruned at start)."""
    conn = open_database(db)
    now_ms = int(time.time() * 1000)
    try:
        first = event_log.resume_numbering(conn, ahead=count) + 1
        ids = list(range(first, first + count))
        batch = [Event(event_id, "test_event", {"n": n}, now_ms) for n, event_id in enumerate(ids)]
        event_log.append_batch(conn, batch)
        return ids
    finally:
        conn.close()


async def test_events_resume_from_the_last_id_across_a_daemon_restart(
    running: LocalDaemon,
) -> None:
    assert running.services is not None
    running.services.events.publish("test_event", {"n": -1})
    async with MeshClient(running.paths.socket) as client:
        stream = client.events()
        with trio.fail_after(20):
            (before,) = await publish(running.services.events, "test_event", {"n": 0})
            assert (await next_kind(stream, "test_event"))["event_id"] == before.event_id
            await running.stop()
            assert (await next_kind(stream, "client_disconnected"))["reason"]
            missed = await trio.to_thread.run_sync(
                functools.partial(append_events, running.paths.state_db, 3)
            )
            await running.start()
            taken = await take_kinds(stream, {"test_event": 3, "client_reconnected": 1})
            replayed = [event["event_id"] for event in taken if event["kind"] == "test_event"]
            assert replayed == missed  # each missed event once, in order, none from before
            assert [event.get("count") for event in taken if "count" in event] == [1]
            (after,) = await publish(running.services.events, "test_event", {"n": 4})
            assert (await next_kind(stream, "test_event"))["event_id"] == after.event_id
        assert client.reconnects == 1
        assert (await client.status())["client_id"] == "c1"  # ids restart with the daemon


def unlog_after(db: Path, event_id: int) -> None:
    """Leave a stopped daemon's log as a kill would have: the events after `event_id` went
    out live but their write never happened."""
    conn = open_database(db)
    try:
        conn.execute("DELETE FROM events WHERE event_id > ?", (event_id,))
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (event_id,))
    finally:
        conn.close()


async def test_after_a_kill_that_left_events_unlogged_the_client_still_gets_new_ones(
    running: LocalDaemon,
) -> None:
    assert running.services is not None
    async with MeshClient(running.paths.socket) as client:
        stream = client.events()
        with trio.fail_after(20):
            logged, *unlogged = await publish(
                running.services.events, "test_event", *({"n": n} for n in range(3))
            )
            for _ in range(3):
                await next_kind(stream, "test_event")
            await running.stop()
            await trio.to_thread.run_sync(unlog_after, running.paths.state_db, logged.event_id)
            await running.start()
            assert (await next_kind(stream, "client_reconnected"))["count"] == 1
            (after,) = await publish(running.services.events, "test_event", {"n": 3})
            assert after.event_id > unlogged[-1].event_id
            assert (await next_kind(stream, "test_event"))["n"] == 3  # not taken for a seen one


async def test_calls_made_while_the_daemon_restarts_wait_for_it(running: LocalDaemon) -> None:
    async with MeshClient(running.paths.socket) as client:
        stream = client.events()
        with trio.fail_after(20):
            await running.stop()
            await next_kind(stream, "client_disconnected")
            async with trio.open_nursery() as nursery:
                answers: list[Any] = []

                async def status_during_restart() -> None:
                    answers.append(await client.status())

                nursery.start_soon(status_during_restart)
                await trio.testing.wait_all_tasks_blocked()
                assert not answers
                await running.start()
        assert answers[0]["clients"] == 1


async def test_resume_point_from_a_previous_run(running: LocalDaemon) -> None:
    assert running.services is not None
    hub = running.services.events
    ids = [e.event_id for e in await publish(hub, "test_event", *({"n": n} for n in range(4)))]
    client = MeshClient(running.paths.socket, events_since=ids[1])
    stream = client.events()  # before the bring-up, which replays what came after ids[1]
    async with client:
        with trio.fail_after(5):
            replayed = [(await next_kind(stream, "test_event"))["event_id"] for _ in range(2)]
    assert replayed == ids[2:]


@pytest.mark.parametrize("timeout", [0, -1], ids=["none_left", "already_passed"])
async def test_a_call_with_no_time_left_hits_its_deadline(
    running: LocalDaemon, timeout: float
) -> None:
    """The connection is up, so finding it takes no time the deadline could cut: the time
    left after it is zero or less (the clock moved on), and the call still ends as late."""
    async with MeshClient(running.paths.socket) as client:
        with pytest.raises(DeadlineExceeded) as failure:
            await client.call("status", timeout=timeout)
        assert failure.value.code == "deadline"
        assert (await client.status())["device_id"]  # the client is still fine


async def test_outbox_list_names_the_network_the_op_takes(running: LocalDaemon) -> None:
    wan = {"id": "wan", "brokers": ["ws://127.0.0.1:9/v1"]}
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK, wan])
        away = device_id_from_public_key(bytes(SigningKey.generate().verify_key))
        for network in ("lan", "wan"):
            await client.send(network, away, f"to {network}", client_message_id=network)
        for network in ("lan", "wan"):
            rows = (await client.outbox_list(limit=10, network=network))["rows"]
            assert [row["client_message_id"] for row in rows] == [network]
        every = (await client.outbox_list(limit=10))["rows"]
        assert sorted(row["network"] for row in every) == ["lan", "wan"]


async def test_inbox_and_outbox_list_take_the_ops_default_page(running: LocalDaemon) -> None:
    """`limit` may be left out, as the ops let it be: the daemon's default page is asked."""
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        away = device_id_from_public_key(bytes(SigningKey.generate().verify_key))
        await client.send("lan", away, "queued", client_message_id="queued")
        rows = (await client.outbox_list())["rows"]
        assert [row["client_message_id"] for row in rows] == ["queued"]
        assert (await client.inbox(network="lan"))["messages"] == []
