"""Durable messages while the state database refuses writes (a full disk: `storage`): the
outbox waits with its work instead of crashing (five crashes in 10 s stopped the daemon), and
delivers, stores and records everything once the disk takes writes again."""

from __future__ import annotations

import sqlite3

import pytest
import structlog
import trio

from meshactors.daemon import outbox as outbox_module
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair
from tests.network.test_delivery import delivered, inbox_of

FULL_DISK_SENDS = 5
FULL_DISK_RETRY_S = 0.05  # the outbox's STORAGE_RETRY_S here: the test need not wait 5 s
FULL_DISK_POLL_S = 0.01  # how often a wait reads the outbox's refusal count


async def refuse_writes(daemon: Daemon, refuse: bool) -> None:
    """Make the daemon's state database refuse every write, as a full disk does, or take them
    again: SQLite's `query_only` fails them with SQLITE_READONLY, which the store answers as
    `storage` like SQLITE_FULL."""

    def set_query_only(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {int(refuse)}")

    await daemon.services.store.call(set_query_only, what="test: refuse writes")


async def refused(daemon: Daemon, times: int) -> None:
    """Return once the daemon's outbox has had `times` writes refused, none of its actors
    having crashed meanwhile."""
    outbox = daemon.services.outbox
    with trio.fail_after(WAIT):
        while outbox.counts["storage_refused"] < times:
            assert daemon.crashes() == {}
            await trio.sleep(FULL_DISK_POLL_S)


@pytest.fixture(autouse=True)
def quick_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "STORAGE_RETRY_S", FULL_DISK_RETRY_S)


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
    await refuse_writes(a, True)
    with structlog.testing.capture_logs() as logs:
        b = await mesh.daemon("b")
        await refused(a, 1)  # told of its return
        a.services.outbox.poke()  # a pass claims for it
        await refused(a, 4)  # and both try again
    await refuse_writes(a, False)
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
    await refuse_writes(b, True)  # b cannot store what comes: it acks nothing yet
    sent = [
        await a.call("send", network=NET, to=b.device_id, message=f"m{n}")
        for n in range(FULL_DISK_SENDS)
    ]
    assert {row["status"] for row in sent} == {"inflight"}
    await refused(b, 1)  # b holds the received messages
    await refuse_writes(a, True)
    await refuse_writes(b, False)  # b stores and acks them; a cannot record the acks
    outbox = a.services.outbox
    with trio.fail_after(WAIT):
        while not (outbox._recording and outbox.counts["storage_refused"]):
            assert a.crashes() == {}
            await trio.sleep(FULL_DISK_POLL_S)
    await refuse_writes(a, False)
    for row in sent:
        await delivered(a, row["id"])
    assert len(await inbox_of(b, FULL_DISK_SENDS)) == FULL_DISK_SENDS
    assert len([e for e in b.events if e["kind"] == "message"]) == FULL_DISK_SENDS
    assert (a.crashes(), b.crashes()) == ({}, {})
