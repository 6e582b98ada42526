"""The `events` actor's log: a write the store takes longer than its usual deadline to make
(a disk that stalls, a loop frozen past the deadline) is still logged, and not counted as
unlogged."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import trio
import trio.testing

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.event_hub import EventHub
from meshactors.store.actor import STORE_CALL_TIMEOUT, StoreActor


async def test_a_log_write_slower_than_the_store_deadline_is_kept_and_counted_logged(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    tree = Supervisor(children=[ChildSpec("store", store), ChildSpec("events", hub)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        stall = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        with contextlib.closing(stall):
            stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the store's write waits on it
            for n in range(10):
                hub.publish("tick", {"n": n})
            await trio.testing.wait_all_tasks_blocked()  # the log write is the store's now
            mock_clock.jump(STORE_CALL_TIMEOUT + 1)  # every deadline of that moment runs out
            await trio.testing.wait_all_tasks_blocked()
            stall.execute("COMMIT")
        replayed = await hub.replay(0, 100)
        assert [event.data["n"] for event in replayed.events] == list(range(10))
        assert hub.figures()["unlogged"] == 0
        nursery.cancel_scope.cancel()
