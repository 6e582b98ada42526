"""A supervisor told to stop while it restarts a child still stops (it used to wait forever),
the requests it had taken are dropped when it ends, not left to their deadline, and the exit
of a child it stopped or replaced is not taken for the new child's; its queue stays bounded.
A child never started is stopped or replaced at once."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import ClassVar

import attrs
import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import (
    DEFAULT_INBOX_CAPACITY,
    Actor,
    ActorGone,
    ActorState,
    AskTimeout,
    ChildSpec,
    Node,
    Restart,
    RestartLimits,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    run_root,
)
from meshactors.actors._supervisor import CONTROL_QUEUE
from tests.actors.conftest import FAST, Journal, ProbeActor
from tests.support import StartGate

STOP_DEADLINE = 30.0  # seconds (mock clock) the tree may take to stop; far above every bound
PROMPT = 5.0  # seconds an ask the supervisor dropped may take to end; far below ASK_TIMEOUT


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


@attrs.define(eq=False)
class Outcome:
    """What an ask ended with, once it did."""

    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    async def of(self, asking: Callable[[], Awaitable[object]]) -> None:
        try:
            await asking()
        except (ActorGone, AskTimeout, ValueError) as exc:
            self.error = exc
        self.done.set()

    async def wait_gone(self) -> None:
        """Wait for the ask to end, well before the ask's own deadline: it heard ActorGone."""
        with trio.fail_after(PROMPT):
            await self.done.wait()
        assert isinstance(self.error, ActorGone)


@pytest.mark.parametrize("ending", ["stopped", "escalating"])
async def test_requests_a_supervisor_took_and_did_not_handle_are_dropped_when_it_ends(
    ending: str, journal: Journal, root: Node
) -> None:
    """A stop asked while the supervisor is held in a start (a gate child) waits in its queue;
    the run ends (stopped from outside, or escalating a crash it handles first): the asker
    hears ActorGone at once (it used to wait out ASK_TIMEOUT), as does the start it was in."""
    probe, gate = ProbeActor("probe", journal), StartGate()
    sup = Supervisor(children=[ChildSpec("probe", probe)], limits=RestartLimits(intensity=0))
    tree = trio.CancelScope()

    async def run_tree(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with tree, contextlib.suppress(SupervisorEscalation):
            await run_root(sup, root, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_tree)
        started, stopped = Outcome(), Outcome()
        spec = ChildSpec("gate", gate, Restart.TEMPORARY)
        nursery.start_soon(started.of, functools.partial(sup.start_child, spec))
        with trio.fail_after(PROMPT):
            await gate.starting.wait()
        if ending == "escalating":
            await probe.inbox.sender.send("crash")  # its exit waits behind the gate's start
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(stopped.of, functools.partial(sup.stop_child, "probe"))
        await trio.testing.wait_all_tasks_blocked()  # the stop waits behind the gate's start
        if ending == "stopped":
            tree.cancel()
            await started.wait_gone()
        else:
            gate.opened.set()
        await stopped.wait_gone()
        assert journal.events == ["start probe", "stop probe"]


@pytest.mark.parametrize("renewal", ["replaced", "stopped and started again"])
async def test_a_crash_queued_behind_a_renewal_of_its_name_is_not_the_new_childs(
    renewal: str, journal: Journal, root: Node
) -> None:
    """The old child crashes while a start of a new child of its name (replacing it, or after
    a stop) waits in the supervisor's queue ahead of its exit: that exit was matched by name
    and generation, both the new child's, so the new child, running, was shown restarting and
    one restart was counted against the supervisor. Now it is left alone."""
    old, new, gate = ProbeActor("old", journal), ProbeActor("new", journal), StartGate()
    sup = Supervisor(children=[ChildSpec("x", old)], limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        nursery.start_soon(sup.start_child, ChildSpec("gate", gate, Restart.TEMPORARY))
        with trio.fail_after(PROMPT):
            await gate.starting.wait()
        if renewal == "replaced":
            start = functools.partial(sup.start_child, ChildSpec("x", new), replace=True)
        else:
            assert sup.stop_child_nowait("x")
            start = functools.partial(sup.start_child, ChildSpec("x", new))
        nursery.start_soon(start)
        await trio.testing.wait_all_tasks_blocked()  # the start waits behind the gate's
        await old.inbox.sender.send("crash")  # its exit waits behind the start
        with trio.fail_after(PROMPT):
            await journal.wait_count("stop old", 1)
        gate.opened.set()
        with trio.fail_after(PROMPT):
            await journal.wait_count("start new", 1)
        await trio.testing.wait_all_tasks_blocked()  # the supervisor has handled the old exit
        x = root.children["x"]
        assert (x.state, x.restarts) == (ActorState.RUNNING, 0)
        assert sup.figures()["restarts_in_window"] == 0
        nursery.cancel_scope.cancel()
    assert journal.events == ["start old", "stop old", "start new", "stop new"]


async def test_a_restart_due_for_a_replaced_child_leaves_the_new_one_its_own_backoff(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """The old `x` crashes and waits out its backoff; meanwhile `x` is replaced and the new
    one crashes too. The old restart, matched by name, relaunched the new `x` when the old
    backoff ended, before the new one's (longer: two restarts in the window). Now a restart
    is of the run it was scheduled for, and the new `x` starts again after its own."""
    old, new = ProbeActor("old", journal), ProbeActor("new", journal)
    limits = RestartLimits(intensity=10, period=100.0, backoff_initial=2.0, backoff_max=8.0)
    sup = Supervisor(children=[ChildSpec("x", old)], limits=limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await old.inbox.sender.send("crash")
        await journal.wait_count("stop old", 1)  # its exit is queued: a restart in 2 s
        await sup.start_child(ChildSpec("x", new), replace=True)
        crashed_at = trio.current_time()
        await new.inbox.sender.send("crash")  # the second restart in the window: 4 s
        await journal.wait_count("start new", 2)
        assert trio.current_time() - crashed_at == pytest.approx(4.0)
        assert root.children["x"].restarts == 1
        nursery.cancel_scope.cancel()
    assert journal.events == [
        "start old",
        "stop old",
        "start new",
        "stop new",
        "start new",
        "stop new",
    ]


async def test_the_supervisors_queue_stays_bounded_and_everything_in_it_is_served(
    journal: Journal, root: Node
) -> None:
    """While the supervisor is held in a start (a gate child), children exit and more starts
    are asked than its queue holds: its queue (once unbounded, the inbox's bound defeated by
    the forwarder) stops at CONTROL_QUEUE, the rest wait their turn, and all are served."""
    exiting = [ProbeActor(f"e{i}", journal) for i in range(CONTROL_QUEUE)]
    sup = Supervisor(children=[ChildSpec(p.name, p, Restart.TEMPORARY) for p in exiting])
    gate = StartGate()
    starts = CONTROL_QUEUE + DEFAULT_INBOX_CAPACITY
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        nursery.start_soon(sup.start_child, ChildSpec("gate", gate, Restart.TEMPORARY))
        with trio.fail_after(PROMPT):
            await gate.starting.wait()
        for probe in exiting:
            await probe.inbox.sender.send("exit")
        for i in range(starts):
            spec = ChildSpec(f"s{i}", ProbeActor(f"s{i}", journal), Restart.TEMPORARY)
            nursery.start_soon(sup.start_child, spec)
        await trio.testing.wait_all_tasks_blocked()  # every exit and start waits its turn
        assert sup._control is not None
        held = sup._control.statistics()
        assert (held.max_buffer_size, held.current_buffer_used) == (CONTROL_QUEUE, CONTROL_QUEUE)
        assert held.tasks_waiting_send > 0
        gate.opened.set()
        with trio.fail_after(PROMPT):
            await journal.wait_for(lambda events: len(events) == 2 * CONTROL_QUEUE + starts)
        await trio.testing.wait_all_tasks_blocked()  # the last exits are handled
        children = set(root.children)
        nursery.cancel_scope.cancel()
    assert children == {"gate"} | {f"s{i}" for i in range(starts)}


async def test_an_ask_a_sender_holds_for_a_full_queue_is_dropped_when_the_run_ends(
    root: Node,
) -> None:
    """The queue is full and the forwarder holds one more ask, waiting for room, when the
    supervisor is stopped: that ask too is dropped, its asker told at once (ActorGone)."""
    sup, gate = Supervisor(), StartGate()
    tree = trio.CancelScope()

    async def run_tree(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with tree:
            await run_root(sup, root, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_tree)
        held_in_start = functools.partial(sup.start_child, ChildSpec("gate", gate))
        nursery.start_soon(Outcome().of, held_in_start)
        with trio.fail_after(PROMPT):
            await gate.starting.wait()
        stops = [Outcome() for _ in range(CONTROL_QUEUE + 1)]
        for stop in stops:
            nursery.start_soon(stop.of, functools.partial(sup.stop_child, "absent"))
        await trio.testing.wait_all_tasks_blocked()
        assert sup._control is not None
        assert sup._control.statistics().tasks_waiting_send == 1  # the forwarder, holding one
        tree.cancel()
        for stop in stops:
            await stop.wait_gone()


@pytest.mark.parametrize("renewal", ["stopped", "replaced"])
async def test_a_child_never_started_is_stopped_or_replaced_at_once(
    renewal: str, journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """t is added while x, before it under rest_for_one, waits out its restart: t is held back,
    never started. A stop or a replace of t waited for a run that never was, for t's shutdown
    budget and STOP_GRACE, holding the loop (and x's restart), and logged that t ignored its
    shutdown timeout. Now it is forgotten at once, and x restarts after its backoff."""
    x, t, new = ProbeActor("x", journal), ProbeActor("t", journal), ProbeActor("new", journal)
    sup = Supervisor(children=[ChildSpec("x", x)], strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await x.inbox.sender.send("crash")
        await journal.wait_count("stop x", 1)
        with structlog.testing.capture_logs() as logs, trio.fail_after(PROMPT):
            await sup.start_child(ChildSpec("t", t))  # held back behind x
            if renewal == "stopped":
                assert await sup.stop_child("t")
            else:
                await sup.start_child(ChildSpec("t", new), replace=True)
            await journal.wait_count("start x", 2)
            if renewal == "replaced":
                await journal.wait_count("start new", 1)
        assert "actor ignored its shutdown timeout" not in [e["event"] for e in logs]
        after_x = ["start new"] if renewal == "replaced" else []
        assert journal.events == ["start x", "stop x", "start x", *after_x]
        nursery.cancel_scope.cancel()
