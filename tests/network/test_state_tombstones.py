"""Deleted keys do not count for ever: a tombstone is forgotten once it is older than
TOMBSTONE_TTL_MS, before any summary, by the hourly sweep, at start, and on arrival from a
peer that has not swept yet; one that arrives expired still ends the key it beats."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest
import trio

from meshactors.netstate import replica
from meshactors.netstate.entry import Entry
from meshactors.netstate.frames import StatePut, StateSummary, WireEntry
from meshactors.netstate.hlc import Stamp
from meshactors.netstate.statemap import TOMBSTONE_TTL_MS, StateMap
from tests.network.conftest import NET, UNREACHABLE, WAIT, Daemon, Mesh, OpFailed
from tests.network.rawpeer import approved_raw_peer
from tests.network.test_state import state_figures

NOW_MS = time.time_ns() // 1_000_000
WEEK_AGO_MS = NOW_MS - TOMBSTONE_TTL_MS - 60_000  # a tombstone stamped then expired a minute ago


def saved_rows(daemon: Daemon) -> dict[str, bool]:
    """NET's rows in `daemon`'s database: key to whether it is a tombstone."""
    with contextlib.closing(sqlite3.connect(daemon.home / "state.db", timeout=WAIT)) as conn:
        rows = conn.execute("SELECT key, deleted FROM netstate WHERE network = ?", (NET,))
        return {key: bool(deleted) for key, deleted in rows}


async def test_a_summary_never_carries_an_expired_tombstone(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tombstones expire all the time where keys come and go: a summary holding ones another
    member swept already would make the two pull whole buckets at every exchange, so each
    summary sweeps first (the hourly sweep is for a member nobody exchanges with)."""
    monkeypatch.setattr(replica, "SYNC_INTERVAL", 0.05)
    monkeypatch.setattr(replica, "SYNC_RATE", 20.0)
    b, raw = await approved_raw_peer(mesh, nursery)
    kept = await b.call("state_set", network=NET, key="kept", value=1)
    await b.call("state_set", network=NET, key="gone", value=2)
    await b.call("state_delete", network=NET, key="gone")
    assert state_figures(await b.call("inspect"))["tombstones"] == 1

    monkeypatch.setattr(replica, "TOMBSTONE_TTL_MS", 0)  # every stamp so far has expired
    wall, counter = map(int, kept["version"].split("."))
    only_kept = StateMap()
    only_kept.merge(Entry.write("kept", 1, Stamp(wall, counter), b.device_id))
    with trio.fail_after(WAIT):  # the hourly sweep is an hour away: summaries sweep first
        while True:
            _, frame = await raw.receive()
            if isinstance(frame, StateSummary) and frame.digests == only_kept.summary():
                break
    figures = state_figures(await b.call("inspect"))
    assert (figures["tombstones"], figures["keys"], figures["counters"]["pruned"]) == (0, 1, 1)
    assert saved_rows(b) == {"kept": False}


async def test_a_tombstone_that_expired_while_the_daemon_was_down_goes_at_start(
    mesh: Mesh,
) -> None:
    a = await mesh.daemon("a")
    await a.join(UNREACHABLE)
    await a.call("state_set", network=NET, key="kept", value=1)
    for key in ("old", "recent"):
        await a.call("state_set", network=NET, key=key, value=2)
        await a.call("state_delete", network=NET, key=key)
    await a.stop()
    with contextlib.closing(sqlite3.connect(a.home / "state.db")) as conn:  # a week goes by
        conn.execute("UPDATE netstate SET wall = ? WHERE key = 'old'", (WEEK_AGO_MS,))
        conn.commit()

    a = await mesh.daemon("a")
    await a.call("state_set", network=NET, key="after", value=3)  # queued behind the sweep
    figures = state_figures(await a.call("inspect"))
    assert (figures["tombstones"], figures["counters"]["pruned"]) == (1, 1)
    assert saved_rows(a) == {"kept": False, "recent": True, "after": False}
    with pytest.raises(OpFailed) as missing:
        await a.call("state_get", network=NET, key="old")
    assert missing.value.code == "not_found"


async def test_a_tombstone_that_arrives_expired_ends_what_it_beats_and_is_not_kept(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b, raw = await approved_raw_peer(mesh, nursery)
    by = raw.device_id
    await raw.send_frame(b.device_id, StatePut([WireEntry("old", "v", False, WEEK_AGO_MS, 0, by)]))
    await b.wait_event("state_changed", key="old", deleted=False)
    expired = [
        WireEntry("old", None, True, WEEK_AGO_MS + 1, 0, by),  # ends "old"
        WireEntry("never", None, True, WEEK_AGO_MS, 0, by),  # nothing to end: not kept
    ]
    await raw.send_frame(b.device_id, StatePut(expired))
    await raw.send_frame(b.device_id, StatePut([WireEntry("fresh", None, True, NOW_MS, 0, by)]))
    ended = await b.wait_event("state_changed", key="old", deleted=True)
    assert ended["by"] == by
    await b.wait_event("state_changed", key="fresh", deleted=True)  # saved after the others
    assert state_figures(await b.call("inspect"))["tombstones"] == 1
    assert saved_rows(b) == {"fresh": True}
    assert [e["key"] for e in b.events if e["kind"] == "state_changed"] == ["old", "old", "fresh"]
