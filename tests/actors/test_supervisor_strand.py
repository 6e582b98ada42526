"""Under rest_for_one a restart the supervisor gives up on, or holds back while an earlier
sibling is down, is tried again: no child is left down for good when that sibling's exit
turns out stale (it was stopped) or is not restarted (a transient's work done), nor when its
own stopped run outlives its shutdown budget, and a temporary child forgotten meanwhile does
not break the loop. A child added while an earlier sibling is down waits for it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import (
    Actor,
    ChildSpec,
    Inbox,
    Node,
    Restart,
    Strategy,
    Supervisor,
    run_root,
)
from meshactors.actors._supervisor import STOP_GRACE
from tests.actors.conftest import FAST, Journal, ProbeActor

STRAND_DEADLINE = 100.0  # seconds (mock clock) for a restart; far above every backoff
LINGER_BUDGET = 1.0  # the lingering child's shutdown timeout
LINGER_PAST = 5.0  # seconds its first run's cleanup runs past that budget and STOP_GRACE


@attrs.define(eq=False)
class DoneOnRestart(Actor):
    """Named `w`: crashes on a message; its next run ends its work at once (a normal exit)."""

    kind: ClassVar[str] = "done_on_restart"
    journal: Journal
    runs: int = 0
    inbox: Inbox[str] = attrs.field(factory=Inbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        self.journal.record("start w")
        task_status.started()
        if self.runs == 1:
            await self.inbox.receiver.receive()
            raise RuntimeError("w crashed on purpose")
        await trio.lowlevel.checkpoint()


def rest_for_one(*children: ChildSpec) -> Supervisor:
    return Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=FAST)


async def wait_y_and_z_restarted(
    journal: Journal,
    root: Node,
    sup: Supervisor,
    provoke: Callable[[trio.Nursery], Awaitable[None]],
) -> None:
    """Run `sup`, `provoke` its children's ends, and wait until y and z, held back meanwhile,
    have each started a second time (and y no more than that)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await provoke(nursery)
        with trio.fail_after(STRAND_DEADLINE):
            await journal.wait_count("start z", 2)
        assert journal.events.count("start y") == 2
        nursery.cancel_scope.cancel()


async def test_an_abandoned_restart_is_tried_again_when_the_sibling_that_ended_is_stopped(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """x crashes while y restarts (y's start abandoned), but a stop of x queued before makes
    x's exit stale: y and z were left restarting for good."""
    x, y, z = ProbeActor("x", journal), StartsOnGo(journal, trio.Event()), ProbeActor("z", journal)
    sup = rest_for_one(ChildSpec("x", x), ChildSpec("y", y), ChildSpec("z", z))

    async def crash_y_then_x_stopped(nursery: trio.Nursery) -> None:
        await y.inbox.sender.send("crash")
        await y.starting.wait()
        nursery.start_soon(sup.stop_child, "x")
        await trio.testing.wait_all_tasks_blocked()
        await x.inbox.sender.send("crash")

    await wait_y_and_z_restarted(journal, root, sup, crash_y_then_x_stopped)


async def test_a_restart_held_behind_a_transient_sibling_whose_work_is_done_goes_ahead(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """w (transient) crashes and, restarted, exits at once: its exit is not restarted, and y
    and z, held behind it while it was down, were never started again."""
    w, y, z = DoneOnRestart(journal), ProbeActor("y", journal), ProbeActor("z", journal)
    sup = rest_for_one(
        ChildSpec("w", w, restart=Restart.TRANSIENT), ChildSpec("y", y), ChildSpec("z", z)
    )

    async def crash_w(_nursery: trio.Nursery) -> None:
        await w.inbox.sender.send("crash")

    await wait_y_and_z_restarted(journal, root, sup, crash_w)


async def test_a_restart_due_skips_a_temporary_child_forgotten_by_a_failed_start(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """w's restart fails to start, which forgets the temporary t added while w was down; the
    loop then looked t up among its children and crashed the supervisor (ValueError)."""
    w, t = ProbeActor("w", journal), ProbeActor("t", journal)
    sup = rest_for_one(ChildSpec("w", w))
    with trio.fail_after(STRAND_DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_root, sup, root)
            await w.inbox.sender.send("crash")
            await journal.wait_count("stop w", 1)
            w.fail_start = True
            await sup.start_child(ChildSpec("t", t, restart=Restart.TEMPORARY))
            await journal.wait_count("fail w", 2)
            assert "t" not in root.children
            w.fail_start = False
            await journal.wait_count("start w", 2)
            nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class Lingering(Actor):
    """Named `slow`: its first run's cleanup outlives its shutdown budget (a supervisor whose
    own children's stops, one after another, take longer than its budget)."""

    kind: ClassVar[str] = "lingering"
    journal: Journal
    runs: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        self.journal.record("start slow")
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            if self.runs == 1:
                with trio.CancelScope(shield=True):
                    await trio.sleep(LINGER_BUDGET + STOP_GRACE + LINGER_PAST)
            self.journal.record("stop slow")


@pytest.mark.parametrize("then_crash_z", [False, True], ids=["slow", "z behind slow"])
async def test_a_sibling_whose_stop_outlives_its_budget_is_restarted_once_it_ends(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock, then_crash_z: bool
) -> None:
    """x crashes and slow, stopped to restart, outlives its budget: its restart came due while
    it still ran and was skipped, and its run ended with no exit (it was stopped), so it was
    never started again; z, crashing later, was held behind it for ever."""
    x, slow, z = ProbeActor("x", journal), Lingering(journal), ProbeActor("z", journal)
    sup = rest_for_one(
        ChildSpec("x", x),
        ChildSpec("slow", slow, shutdown_timeout=LINGER_BUDGET),
        ChildSpec("z", z),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await x.inbox.sender.send("crash")
        with trio.fail_after(STRAND_DEADLINE):
            await journal.wait_count("stop slow", 1)
            if then_crash_z:
                await journal.wait_count("start z", 2)
                await z.inbox.sender.send("crash")
            await journal.wait_count("start slow", 2)
            await journal.wait_count("start z", 3 if then_crash_z else 2)
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class CrashOnGo(Actor):
    """Named `x`: crashes once `go` is set."""

    kind: ClassVar[str] = "crash_on_go"
    journal: Journal
    go: trio.Event

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.journal.record("start x")
        task_status.started()
        await self.go.wait()
        raise RuntimeError("x crashed on purpose")


@attrs.define(eq=False)
class StartsOnGo(Actor):
    """Named `y`: crashes on a message; its run `gated` (its first restart, unless told)
    starts once `go` is set, so it calls `started()` in the very scheduler batch in which x
    crashes."""

    kind: ClassVar[str] = "starts_on_go"
    journal: Journal
    go: trio.Event
    gated: int = 2
    runs: int = 0
    starting: trio.Event = attrs.field(factory=trio.Event)
    inbox: Inbox[str] = attrs.field(factory=Inbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs == self.gated:
            self.starting.set()
            await self.go.wait()
        self.journal.record("start y")
        task_status.started()
        try:
            await self.inbox.receiver.receive()
            raise RuntimeError("y crashed on purpose")
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.01)  # a short cleanup, well within its budget
            self.journal.record("stop y")


async def test_a_restart_abandoned_just_after_it_started_is_tried_again(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """x crashes as y's restart calls started(): y's run is cancelled yet still running, so
    it was left out of the retry, and a stop of x queued before made x's exit stale: y was
    down for good."""
    go = trio.Event()
    x, y, z = CrashOnGo(journal, go), StartsOnGo(journal, go), ProbeActor("z", journal)
    sup = rest_for_one(ChildSpec("x", x), ChildSpec("y", y), ChildSpec("z", z))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await y.inbox.sender.send("crash")
        await y.starting.wait()
        nursery.start_soon(sup.stop_child, "x")
        await trio.testing.wait_all_tasks_blocked()
        go.set()
        with trio.fail_after(STRAND_DEADLINE):
            await journal.wait_count("start y", 3)
        nursery.cancel_scope.cancel()


async def test_a_child_added_while_an_earlier_sibling_is_down_starts_after_it(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """z is added while y waits out its restart, which is then abandoned (x crashes, a stop of
    x queued before) and tried again: z started at once, ahead of y, which a start asking y
    would wait for with the loop, and so y's restart, held. It is held back instead, and
    starts once y has, its start_child answered at once."""
    x, z = ProbeActor("x", journal), ProbeActor("z", journal)
    y = StartsOnGo(journal, trio.Event(), gated=3)
    sup = rest_for_one(ChildSpec("x", x), ChildSpec("y", y))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        with trio.fail_after(STRAND_DEADLINE):
            await x.inbox.sender.send("crash")
            await journal.wait_count("start y", 2)
            await y.inbox.sender.send("crash")
            await journal.wait_count("stop y", 2)
            await sup.start_child(ChildSpec("z", z))
            await y.starting.wait()
            nursery.start_soon(sup.stop_child, "x")
            await trio.testing.wait_all_tasks_blocked()
            await x.inbox.sender.send("crash")
            await journal.wait_count("start z", 1)
        assert journal.events[-2:] == ["start y", "start z"]
        assert journal.events.count("start y") == 3
        nursery.cancel_scope.cancel()
