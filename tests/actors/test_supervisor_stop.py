"""A supervisor told to stop while it restarts a child still stops (it used to wait forever)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest
import trio

from meshactors.actors import Actor, ChildSpec, Node, RestartLimits, Strategy, Supervisor, run_root
from tests.actors.conftest import Journal, ProbeActor

FAST = RestartLimits(intensity=3, period=10.0, backoff_initial=0.1, backoff_max=1.0)
STOP_DEADLINE = 30.0  # seconds (mock clock) the tree may take to stop; far above every bound


@attrs.define(eq=False)
class Relauncher(Actor):
    """Crashes when `crash` is set; its restarted run calls `started()` only once `proceed` is."""

    kind: ClassVar[str] = "relauncher"
    crash: trio.Event = attrs.field(factory=trio.Event)
    relaunching: trio.Event = attrs.field(factory=trio.Event)
    proceed: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)  # ends a run nobody else could stop
    runs: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs == 1:
            task_status.started()
            await self.crash.wait()
            raise RuntimeError("relauncher crashed on purpose")
        self.relaunching.set()
        await self.proceed.wait()
        task_status.started()
        await self.release.wait()


@pytest.mark.parametrize("crashed", ["earlier sibling", "itself"])
async def test_a_rest_for_one_supervisor_stopped_mid_restart_stops(
    crashed: str, journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """The daemon's hang: stopped while `nursery.start` waits for a restarted child, the child
    finished starting in a cancelled start nursery, stayed there shielded, and nobody stopped it."""
    relauncher, probe = Relauncher(), ProbeActor("probe", journal)
    children = [ChildSpec("probe", probe), ChildSpec("relauncher", relauncher)]
    sup = Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=FAST)
    tree = trio.CancelScope()
    stopped = trio.Event()

    async def run_tree(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with tree:
            await run_root(sup, root, task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run_tree)
        if crashed == "earlier sibling":  # the old daemon order: outbox crashes, control restarts
            await probe.inbox.sender.send("crash")
        else:  # the daemon's order today: outbox (after control) restarts alone
            relauncher.crash.set()
        await relauncher.relaunching.wait()
        tree.cancel()  # the daemon's shutdown, while the supervisor is inside nursery.start
        relauncher.proceed.set()
        with trio.move_on_after(STOP_DEADLINE):
            await stopped.wait()
        stopped_in_time = stopped.is_set()
        relauncher.release.set()  # before the fix, only this let the test end (and fail)
    assert stopped_in_time, "the supervisor never stopped the child it was restarting"
    assert relauncher.runs == 2
