"""Durable messages while the state database refuses writes (a full disk: `storage`): the
outbox waits with its work instead of crashing (five crashes in 10 s stopped the daemon), and
delivers, stores and records everything once the disk takes writes again; the events the
event log could not take are a gap to a replay across them."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import structlog
import trio

from meshactors.clock import wall_ms
from meshactors.control import event_stream
from meshactors.store import outbox as outbox_store
from meshactors.store import retry as store_retry
from tests.membership.conftest import CLOSED, team
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair
from tests.network.test_delivery import delivered, inbox_of
from tests.network.test_restarts import debug_pair
from tests.support import LineClient, publish, refuse_writes

FULL_DISK_SENDS = 5
FULL_DISK_RETRY_S = 0.05  # the outbox's STORAGE_RETRY_S here: the test need not wait 5 s
FULL_DISK_POLL_S = 0.01  # how often a wait reads the outbox's refusal count
FULL_DISK_RECOVERY_REFUSALS = 3  # refused recoveries an outbox restarted on a full disk waits out
FULL_DISK_BACKOFF_MS = 3_600_000  # a backoff a delivery waits out, as failed attempts leave it


async def refused(daemon: Daemon, times: int) -> None:
    """Return once the daemon's outbox has had `times` writes refused, none of its actors
    having crashed meanwhile."""
    outbox = daemon.services.outbox
    with trio.fail_after(WAIT):
        while outbox._storage.refused < times:
            assert daemon.crashes() == {}
            await trio.sleep(FULL_DISK_POLL_S)


@pytest.fixture(autouse=True)
def quick_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_retry, "STORAGE_RETRY_S", FULL_DISK_RETRY_S)


async def test_a_peer_back_while_the_disk_is_full_gets_everything_once_it_is_not(
    mesh: Mesh,
) -> None:
    a, b = await active_pair(mesh)
    await b.stop()
    await a.wait_status(b, "offline")
    sent = [
        await a.call("send", network=NET, to=b.device_id, message=f"m{n}")
        for n in range(FULL_DISK_SENDS)
    ]
    await refuse_writes(a.services.store, True)
    with structlog.testing.capture_logs() as logs:
        b = await mesh.daemon("b")
        await refused(a, 1)  # told of its return
        a.services.outbox.poke()  # a pass claims for it
        await refused(a, 4)  # and both try again
    await refuse_writes(a.services.store, False)
    warnings = [e for e in logs if e["event"].startswith("the state database refuses writes")]
    assert len(warnings) == 1  # once per STORAGE_LOG_INTERVAL_S, not once per attempt
    for row in sent:
        await delivered(a, row["id"])
    assert sorted(m["message"] for m in await inbox_of(b, FULL_DISK_SENDS)) == [
        f"m{n}" for n in range(FULL_DISK_SENDS)
    ]
    assert (a.crashes(), b.crashes()) == ({}, {})


async def test_acks_that_come_while_the_disk_is_full_are_recorded_once_it_is_not(
    mesh: Mesh,
) -> None:
    a, b = await active_pair(mesh)
    await refuse_writes(b.services.store, True)  # b cannot store what comes: it acks nothing yet
    sent = [
        await a.call("send", network=NET, to=b.device_id, message=f"m{n}")
        for n in range(FULL_DISK_SENDS)
    ]
    assert {row["status"] for row in sent} == {"inflight"}
    await refused(b, 1)  # b holds the received messages
    await refuse_writes(a.services.store, True)
    await refuse_writes(b.services.store, False)  # b stores and acks them; a cannot record the acks
    outbox = a.services.outbox
    with trio.fail_after(WAIT):
        while not (outbox._recording and outbox._storage.refused):
            assert a.crashes() == {}
            await trio.sleep(FULL_DISK_POLL_S)
    await refuse_writes(a.services.store, False)
    for row in sent:
        await delivered(a, row["id"])
    assert len(await inbox_of(b, FULL_DISK_SENDS)) == FULL_DISK_SENDS
    assert len([e for e in b.events if e["kind"] == "message"]) == FULL_DISK_SENDS
    assert (a.crashes(), b.crashes()) == ({}, {})


async def test_a_replay_across_events_the_full_disk_kept_out_of_the_log_reports_the_gap_once(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_stream, "MAX_REPLAY", 1)  # a read per event: each sees the hole
    a = await mesh.daemon("a")
    hub = a.services.events
    (before,) = await publish(hub, "test_before", {})
    await publish(hub, "test_logged", {"n": 0}, {"n": 1})
    await hub.flush()
    await refuse_writes(a.services.store, True)
    lost = await publish(hub, "test_lost", {}, {})
    await hub.flush()
    await refuse_writes(a.services.store, False)
    await publish(hub, "test_after", {})
    await a.wait_event("test_after")
    assert [e["event_id"] for e in a.events if e["kind"] == "test_lost"] == [
        event.event_id for event in lost
    ]  # the live stream had them all
    client = LineClient(await trio.open_unix_socket(str(a.services.paths.socket)))
    await client.call("events_subscribe", since=before.event_id)
    with trio.fail_after(WAIT):
        frames = [(await client.frame())["kind"] for _ in range(4)]
    # where the hole is: after the events logged before it, before the one logged after it
    assert frames == ["test_logged", "test_logged", "events_gap", "test_after"]
    assert a.crashes() == {}


async def test_an_outbox_restarted_while_the_disk_is_full_waits_and_then_delivers(
    mesh: Mesh,
) -> None:
    a, b = await debug_pair(mesh)
    await refuse_writes(
        b.services.store, True
    )  # b stores nothing, so acks nothing: a's sends stay in flight
    sent = [
        await a.call("send", network=NET, to=b.device_id, message=f"m{n}")
        for n in range(FULL_DISK_SENDS)
    ]
    assert {row["status"] for row in sent} == {"inflight"}
    await refuse_writes(a.services.store, True)
    outbox, node = a.services.outbox, a.services.tree.children["outbox"]
    goal = outbox._storage.refused + FULL_DISK_RECOVERY_REFUSALS
    with structlog.testing.capture_logs() as logs:
        await a.call("debug_crash", path="daemon/outbox")  # its recovery at start is refused
        with trio.fail_after(WAIT):
            while outbox._storage.refused < goal:
                # Plain values only in asserts: a failing one naming a daemon object would
                # have pytest print the whole daemon through it.
                restarts = node.restarts
                assert restarts <= 1  # it waits for the disk, not crash after crash
                await trio.sleep(FULL_DISK_POLL_S)
        await b.stop()  # what b held unstored is gone: only a's recovery sends it again
        await a.wait_status(b, "offline")
        await refuse_writes(a.services.store, False)
        b = await mesh.daemon("b")
        for row in sent:
            await delivered(a, row["id"])
    recovered = [e["count"] for e in logs if e["event"] == "recovered inflight deliveries"]
    assert recovered == [FULL_DISK_SENDS]
    assert len(await inbox_of(b, FULL_DISK_SENDS)) == FULL_DISK_SENDS
    restarts = node.restarts
    assert restarts == 1


async def back_off(daemon: Daemon, row_id: str) -> None:
    """Have the delivery of row `row_id` wait out an hour, as eight failed attempts leave it."""

    def edit(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE deliveries SET attempts = 8, next_attempt_at = ? WHERE outbox_id = ?",
            (wall_ms() + FULL_DISK_BACKOFF_MS, row_id),
        )

    await daemon.services.store.call(edit, what="test: back off")


async def released(daemon: Daemon) -> None:
    """Return once the daemon's outbox has no attempt in flight, none of its actors having
    crashed meanwhile."""
    outbox = daemon.services.outbox
    with trio.fail_after(WAIT):
        while outbox.figures()["inflight"]:
            assert daemon.crashes() == {}
            await trio.sleep(FULL_DISK_POLL_S)


async def test_the_outbox_reads_peer_events_while_the_disk_is_full_and_catches_up_after(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, back, gone, away = await team(mesh, "owner", "back", "gone", "away")
    for peer in (back, gone):
        await peer.stop()
        await owner.wait_status(peer, "offline")
    to_gone = await owner.call("send", network=CLOSED, to=gone.device_id, message="never")
    to_back = await owner.call("send", network=CLOSED, to=back.device_id, message="later")
    await back_off(owner, to_back["id"])  # back's return cuts it short
    await refuse_writes(away.services.store, True)  # away stores nothing, so acks nothing
    to_away = await owner.call("send", network=CLOSED, to=away.device_id, message="again")
    assert to_away["status"] == "inflight"
    bury, owners = outbox_store.bury_evicted, str(owner.services.store.path)
    freed = trio.Event()

    def full_from_the_burial(conn: sqlite3.Connection, **params: Any) -> outbox_store.Expired:
        """The owner's burial on a disk that fills up as it comes: refused, like every
        write after it until the test frees the disk."""
        (_, _, file), *_ = conn.execute("PRAGMA database_list")
        if not freed.is_set() and file == owners:
            conn.execute("PRAGMA query_only = 1")
        return bury(conn, **params)

    monkeypatch.setattr(outbox_store, "bury_evicted", full_from_the_burial)
    await owner.call("members_evict", network=CLOSED, device_id=gone.device_id)
    await refused(owner, 1)  # the burial waits for the disk
    mark = owner.last_event_id
    await away.stop()  # the watcher reads that, so away's attempt is released at once
    await owner.wait_status(away, "offline", after=mark)
    await released(owner)
    mark = owner.last_event_id
    back = await mesh.daemon("back")
    await owner.wait_status(back, "active", after=mark)
    freed.set()
    await refuse_writes(owner.services.store, False)
    dead = await owner.wait_event("message_dead", id=to_gone["id"])
    assert (dead["recipient"], dead["error"]) == (gone.device_id, "evicted")
    await delivered(owner, to_back["id"])  # its backoff cut: not an hour later
    away = await mesh.daemon("away")
    await delivered(owner, to_away["id"])
    figures = owner.services.outbox.figures()
    assert (figures["backoffs_cut"], figures["redue"]) == (1, 1)
    assert owner.crashes() == {}
