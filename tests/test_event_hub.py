"""The `events` actor's log: a write the store takes longer than its usual deadline to make
(a disk that stalls, a loop frozen past the deadline) is still logged, and not counted as
unlogged, and a start whose store call takes as long starts, crashing nothing; a flush whose
write a stop cuts off, or that a stop cuts off while it waits for room in a full log queue, is
told so at once; what is still queued at a stop is logged, a
full log queue and all; events a refused write or a full log queue loses are a gap to a
replay, and the refusals (a full disk, another process's lock) are warned at most once an
interval; the spent mark grows ahead of
numbering, and events dropped unnumbered (a full inbox, no spent id left) are counted, those
for want of an id told by an `events_dropped` event where they were; `publish_logged` answers
whether the log holds all its events."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import structlog
import trio
import trio.testing

from meshactors import event_hub
from meshactors.actors import (
    ActorGone,
    ActorState,
    ChildSpec,
    Node,
    Strategy,
    Subscriber,
    Supervisor,
    run_root,
)
from meshactors.event_hub import EventHub
from meshactors.store import db as store_db
from meshactors.store import events as event_log
from meshactors.store.actor import STORE_CALL_TIMEOUT, StoreActor
from meshactors.store.events import Event
from tests.daemon.outbox_parts import HELD_WAIT, HeldStoreCall, past_the_deadline
from tests.support import publish, refuse_writes


async def test_a_log_write_slower_than_the_store_deadline_is_kept_and_counted_logged(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with running_hub(tmp_path) as hub:
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


async def test_a_start_whose_store_call_outlives_the_store_deadline_crashes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """The start's numbering waits for the store however long it takes: given up, a first
    start would fail the daemon, and a restart crash the hub again and restart every child of
    the daemon's rest_for_one root after it."""
    held = HeldStoreCall.hold(monkeypatch, event_log, "resume_numbering")
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    tree = Supervisor(
        children=[ChildSpec("store", store), ChildSpec("events", hub)],
        strategy=Strategy.REST_FOR_ONE,
    )
    tree_node = Node(name="tree", kind="supervisor")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_root, tree, tree_node)
        await past_the_deadline(held, mock_clock)  # the first start's numbering
        with trio.fail_after(HELD_WAIT):
            (event,) = await publish(hub, "tick", {"n": 0})  # the hub numbers: it started
        events = tree_node.children["events"]
        assert (events.state, events.restarts) == (ActorState.RUNNING, 0)
        assert event.event_id == 1
        nursery.cancel_scope.cancel()


@attrs.define
class StalledHub:
    """A running hub whose store's disk is stalled (another connection holds the write lock),
    with a flush the test starts and a stop it makes."""

    hub: EventHub
    events: ChildSpec  # the hub's place in the tree, with its shutdown timeout
    nursery: trio.Nursery
    stopping: trio.CancelScope
    stall: sqlite3.Connection
    outcome: list[str] = attrs.field(factory=list)
    _answered: trio.Event = attrs.field(factory=trio.Event)

    def flush(self) -> None:
        """Ask the hub to flush, recording whether it `flushed` or was `gone`."""

        async def flushing() -> None:
            try:
                await self.hub.flush(timeout=math.inf)
                self.outcome.append("flushed")
            except ActorGone:
                self.outcome.append("gone")
            self._answered.set()

        self.nursery.start_soon(flushing)

    async def answers(self, count: int) -> list[str]:
        """The outcomes once `count` flushes are answered."""
        while len(self.outcome) < count:
            self._answered = trio.Event()
            await self._answered.wait()
        return self.outcome

    def release(self) -> None:
        """End the stall: the store's writes go through from now on."""
        if self.stall.in_transaction:
            self.stall.execute("COMMIT")


@contextlib.asynccontextmanager
async def running_hub(tmp_path: Path) -> AsyncIterator[EventHub]:
    """A hub and its store on the database in tmp_path, running until the block ends."""
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    tree = Supervisor(children=[ChildSpec("store", store), ChildSpec("events", hub)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        yield hub
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def watched_hub(tmp_path: Path) -> AsyncIterator[tuple[EventHub, Subscriber[Event]]]:
    """A running hub (`running_hub`) and a live watch of all it publishes from its start."""
    async with running_hub(tmp_path) as hub:
        live, _ = await hub.subscribe(16)
        yield hub, live


@contextlib.asynccontextmanager
async def stalled_hub(tmp_path: Path) -> AsyncIterator[StalledHub]:
    """A hub and its store in a tree the test can stop, the store's disk stalled throughout."""
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    events = ChildSpec("events", hub)
    tree = Supervisor(children=[ChildSpec("store", store), events])
    async with trio.open_nursery() as nursery:
        stopping = trio.CancelScope()

        async def running(task_status: trio.TaskStatus[None]) -> None:
            with stopping:
                await run_root(tree, Node(name="tree", kind="supervisor"), task_status=task_status)

        await nursery.start(running)
        stall = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        with contextlib.closing(stall):
            stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the log writes wait on it
            stalled = StalledHub(hub, events, nursery, stopping, stall)
            yield stalled
            stalled.release()
        nursery.cancel_scope.cancel()


async def test_a_flush_whose_log_write_a_stop_cuts_off_hears_the_hub_is_gone(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with stalled_hub(tmp_path) as stalled:
        stalled.hub.publish("tick", {"n": 0})
        await trio.testing.wait_all_tasks_blocked()  # its write is the store's now
        stalled.hub.publish("tick", {"n": 1})
        stalled.flush()  # behind event 1, in the next write
        await trio.testing.wait_all_tasks_blocked()
        stalled.stopping.cancel()  # the hub writes what it holds while it stops, so long
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(stalled.events.shutdown_timeout + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert stalled.outcome == ["gone"]  # its write was cut off: not left waiting


async def fill_the_log_queue(stalled: StalledHub) -> None:
    """Event 0 in the stalled store's hands, events 1 and 2 filling the log queue (the test
    makes it hold 2), then a flush the hub waits for room to queue."""
    stalled.hub.publish("tick", {"n": 0})
    await trio.testing.wait_all_tasks_blocked()  # its write is the store's now
    for n in range(1, 3):
        stalled.hub.publish("tick", {"n": n})
    stalled.flush()
    await trio.testing.wait_all_tasks_blocked()


async def stop_with_a_flush_queued(stalled: StalledHub) -> None:
    """The log queue full, then event 3 and a second flush still in the hub's inbox when it
    stops (its log writer gone then)."""
    await fill_the_log_queue(stalled)
    stalled.hub.publish("tick", {"n": 3})
    stalled.flush()
    await trio.testing.wait_all_tasks_blocked()
    stalled.stopping.cancel()
    await trio.testing.wait_all_tasks_blocked()


async def test_a_flush_a_stop_cuts_off_while_the_log_queue_is_full_hears_the_hub_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "PERSIST_QUEUE", 2)
    async with stalled_hub(tmp_path) as stalled:
        await fill_the_log_queue(stalled)
        assert stalled.hub.figures()["log_queue"] == 2
        stalled.stopping.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert stalled.outcome == ["gone"]  # the stop cut its wait for room: not left waiting


async def test_a_stop_logs_what_is_queued_and_answers_a_queued_flush_with_the_log_queue_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "PERSIST_QUEUE", 2)
    async with stalled_hub(tmp_path) as stalled:
        await stop_with_a_flush_queued(stalled)
        stalled.release()
        with trio.fail_after(30):  # a deadlock guard: the hub's cleanup budget is 5 s
            assert await stalled.answers(2) == ["gone", "flushed"]
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        logged = [row[0] for row in db.execute("SELECT data_json FROM events ORDER BY event_id")]
    assert [json.loads(data)["n"] for data in logged] == [0, 1, 2, 3]


async def test_what_a_stop_runs_out_of_time_for_is_counted_and_its_askers_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(event_hub, "PERSIST_QUEUE", 2)
    async with stalled_hub(tmp_path) as stalled:
        await stop_with_a_flush_queued(stalled)  # writing the full log queue: the disk stalls
        mock_clock.jump(stalled.events.shutdown_timeout + 1)  # the cleanup budget runs out
        await trio.testing.wait_all_tasks_blocked()
        assert stalled.outcome == ["gone", "gone"]  # the queued flush is told too
        assert stalled.hub.figures()["dropped"] == 1  # event 3, never numbered


async def test_a_restart_never_reuses_an_id_sent_live_but_not_logged(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with stalled_hub(tmp_path) as stalled:
        live, _ = await stalled.hub.subscribe(16)
        for n in range(3):  # sent live at once; the stalled disk logs none of them
            stalled.hub.publish("tick", {"n": n})
        sent = [(await live.receive()).event_id for _ in range(3)]
        stalled.stopping.cancel()  # as good as a kill: the stop's writes wait on the disk
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(stalled.events.shutdown_timeout + 1)  # and its budget runs out
        await trio.testing.wait_all_tasks_blocked()
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        logged = [row[0] for row in db.execute("SELECT event_id FROM events")]
    assert max(logged, default=0) < max(sent)  # the newest ones went live, not to the log
    async with watched_hub(tmp_path) as (hub, live):
        hub.publish("tick", {"n": 3})
        after_restart = (await live.receive()).event_id
        assert after_restart > max(sent)
        # A client that saw the unlogged events resumes after the last of them: it gets the new
        # one, which is not mistaken for one it already has.
        replayed = await hub.replay(max(sent), 100)
        assert [(event.event_id, event.data) for event in replayed.events] == [
            (after_restart, {"n": 3})
        ]


async def test_no_id_past_what_the_log_marks_spent_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "SPEND_AHEAD", 4)
    async with stalled_hub(tmp_path) as stalled:
        live, _ = await stalled.hub.subscribe(16)
        for n in range(6):  # the start marked ids 1-4 spent; the stalled disk marks no more
            stalled.hub.publish("tick", {"n": n})
        with trio.fail_after(5):
            sent = [(await live.receive()).event_id for _ in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        assert (sent, stalled.hub.figures()["dropped"]) == ([1, 2, 3, 4], 2)
        stalled.release()  # the log catches up and marks more ids spent: numbering goes on
        with trio.fail_after(5):
            await stalled.hub.flush()
            stalled.hub.publish("tick", {"n": 6})
            # told where the hole is, live and in the log: before the next event
            told = [(await live.receive()) for _ in range(2)]
            replayed = await stalled.hub.replay(4, 100)
        expected = [(5, "events_dropped", {"count": 2}), (6, "tick", {"n": 6})]
        assert [(event.event_id, event.kind, event.data) for event in told] == expected
        assert [(event.event_id, event.kind, event.data) for event in replayed.events] == expected
    assert spent_mark(tmp_path) >= 5


async def test_events_logged_before_a_restart_are_still_replayed_after_it(tmp_path: Path) -> None:
    runs: list[list[int]] = []
    for run in range(2):  # a new hub on the same database: its ids jump past the last run's
        async with watched_hub(tmp_path) as (hub, live):
            for n in range(3):
                hub.publish("tick", {"run": run, "n": n})
            with trio.fail_after(5):
                runs.append([(await live.receive()).event_id for _ in range(3)])
                replayed = await hub.replay(runs[0][0], 100)
    assert runs[1][0] > runs[0][-1] + event_hub.SPEND_AHEAD // 2  # the ids jumped
    assert not replayed.gap
    assert [event.event_id for event in replayed.events] == runs[0][1:] + runs[1]


async def test_events_a_refused_log_write_lost_are_a_replay_gap_warned_once_an_interval(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with watched_hub(tmp_path) as (hub, live):
        (kept,) = await publish(hub, "tick", {"n": 0})
        await hub.flush()
        await refuse_writes(hub.store, True)  # a full disk: every log write is refused
        with structlog.testing.capture_logs() as logs:
            lost = []
            for n in range(1, 4):  # a write each, all refused
                if n == 3:
                    mock_clock.jump(event_hub.LOG_WARNING_INTERVAL_S)
                lost += await publish(hub, "tick", {"n": n})
                await hub.flush()
        warnings = [entry for entry in logs if entry["event"].startswith("could not log events")]
        # the first failure at once, then one warning an interval later counting those since
        assert [entry["failed_writes"] > 1 for entry in warnings] == [False, True]
        assert hub.figures()["unlogged"] == 3
        assert [(await live.receive()).data["n"] for _ in range(4)] == [0, 1, 2, 3]  # live: all
        assert (await hub.replay(kept.event_id, 100)).gap  # while the log still refuses them
        await refuse_writes(hub.store, False)
        (after,) = await publish(hub, "tick", {"n": 4})
        replayed = await hub.replay(kept.event_id, 100)
        assert (replayed.gap, [event.event_id for event in replayed.events]) == (
            True,
            [after.event_id],
        )
        assert not (await hub.replay(lost[-1].event_id, 100)).gap  # none lost after the last
    async with running_hub(tmp_path) as hub:  # the log recorded the loss: a restart keeps it
        assert (await hub.replay(kept.event_id, 100)).gap


LOCKED_BUSY_MS = 10  # the store's busy timeout while another process holds the lock


async def test_events_another_process_s_lock_lost_are_a_replay_gap_warned_as_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's `sqlite3` shell holds the write lock on the real database file past the
    busy timeout: the log write is refused (`storage`) as on a full disk, its events lost to
    the log and a gap to a replay, warned without a traceback (no bug), and the hub goes on."""
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", LOCKED_BUSY_MS)
    async with running_hub(tmp_path) as hub:
        shell = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        with contextlib.closing(shell), structlog.testing.capture_logs() as logs:
            shell.execute("BEGIN IMMEDIATE")
            (lost,) = await publish(hub, "tick", {"n": 0})
            assert await hub.flush() == lost.event_id
            shell.execute("ROLLBACK")
        (warning,) = [entry for entry in logs if entry["event"].startswith("could not log events")]
        assert "lock" in warning["error"] and warning["exc_info"] is None
        (after,) = await publish(hub, "tick", {"n": 1})
        replayed = await hub.replay(0, 100)
        assert (replayed.gap, [event.event_id for event in replayed.events]) == (
            True,
            [after.event_id],
        )


async def test_events_a_full_log_queue_lost_are_counted_and_a_replay_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's task loses them and hands the loss to the log writer, which records it."""
    monkeypatch.setattr(event_hub, "PERSIST_QUEUE", 2)
    async with stalled_hub(tmp_path) as stalled:
        hub = stalled.hub
        hub.publish("tick", {"n": 0})
        await trio.testing.wait_all_tasks_blocked()  # its write is the store's now
        for n in range(1, 5):  # 1 and 2 fill the log queue; 3 and 4 find it full
            hub.publish("tick", {"n": n})
        await trio.testing.wait_all_tasks_blocked()
        assert hub.figures()["unlogged"] == 2
        stalled.release()
        with trio.fail_after(5):
            assert await hub.flush() == 5  # the newest lost: event 4's id
            assert (await hub.replay(0, 100)).gap
            assert not (await hub.replay(5, 100)).gap
    async with running_hub(tmp_path) as hub:  # the log recorded the loss: a restart keeps it
        assert (await hub.replay(0, 100)).gap


async def test_events_a_full_hub_inbox_refuses_are_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`publish` never waits: what finds the inbox full is counted by the publisher's task."""
    monkeypatch.setattr(event_hub, "HUB_INBOX", 2)
    async with watched_hub(tmp_path) as (hub, live):
        await trio.testing.wait_all_tasks_blocked()  # the hub waits: the first goes to it
        for n in range(5):  # no checkpoint between them: the hub takes no more meanwhile
            hub.publish("tick", {"n": n})
        with trio.fail_after(5):
            await hub.flush()
        assert [(await live.receive()).data["n"] for _ in range(3)] == [0, 1, 2]
        assert (hub.figures()["dropped"], hub.figures()["last_event_id"]) == (2, 3)


async def test_publish_logged_says_whether_the_log_holds_every_event_it_published(
    tmp_path: Path,
) -> None:
    async with watched_hub(tmp_path) as (hub, live):
        with trio.fail_after(5):
            assert await hub.publish_logged("tick", [{"n": 0}, {"n": 1}])
            await refuse_writes(hub.store, True)  # a full disk: the write is refused
            assert not await hub.publish_logged("tick", [{"n": 2}])
            await refuse_writes(hub.store, False)
            assert await hub.publish_logged("tick", [{"n": 3}])
            assert [(await live.receive()).data["n"] for _ in range(4)] == [0, 1, 2, 3]
        replayed = await hub.replay(0, 100)
        assert [event.data["n"] for event in replayed.events] == [0, 1, 3]


async def test_publish_logged_says_no_when_the_log_queue_loses_one_of_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "PERSIST_QUEUE", 2)
    async with stalled_hub(tmp_path) as stalled:
        stalled.hub.publish("tick", {"n": 0})
        await trio.testing.wait_all_tasks_blocked()  # its write is the store's now
        with trio.fail_after(5):  # 1 and 2 fill the log queue, 3 finds it full: no wait
            assert not await stalled.hub.publish_logged("tick", [{"n": n} for n in (1, 2, 3)])


def spent_mark(home: Path) -> int:
    """The event ids the log in `home` marks spent, up to."""
    with contextlib.closing(sqlite3.connect(home / "state.db")) as db:
        (spent,) = db.execute(
            "SELECT value_json FROM local_settings WHERE key = 'event_ids_spent'"
        ).fetchone()
    return int(spent)


async def test_the_spent_mark_grows_ahead_of_numbering_while_the_log_keeps_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "SPEND_AHEAD", 4)
    async with watched_hub(tmp_path) as (hub, live):
        with trio.fail_after(5):
            for n in range(12):  # three times what the start marked spent, each one logged
                hub.publish("tick", {"n": n})
                await hub.flush()
            sent = [(await live.receive()).event_id for _ in range(12)]
        assert (sent, hub.figures()["dropped"]) == (list(range(1, 13)), 0)
        assert spent_mark(tmp_path) > 12
