"""Supervisor semantics: ordered start, reverse stop, restarts, strategies, intensity."""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import (
    Actor,
    ActorState,
    AskTimeout,
    ChildSpec,
    ChildStartFailed,
    Inbox,
    Node,
    Reply,
    Restart,
    RestartLimits,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    current_node,
    run_root,
)
from tests.actors.conftest import FAST, Journal, ProbeActor

PROMPT = 5.0  # seconds (mock clock) for what waits on no ask; far below an ask's 30 s


def probes(journal: Journal, *names: str, restart: Restart = Restart.PERMANENT) -> list[ProbeActor]:
    return [ProbeActor(name, journal) for name in names]


def specs(children: list[ProbeActor], restart: Restart = Restart.PERMANENT) -> list[ChildSpec]:
    return [ChildSpec(p.name, p, restart=restart) for p in children]


async def test_starts_in_order_and_stops_in_reverse(journal: Journal, root: Node) -> None:
    children = probes(journal, "a", "b", "c")
    sup = Supervisor(children=specs(children))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        assert journal.events == ["start a", "start b", "start c"]
        assert [n.state for n in root.children.values()] == [ActorState.RUNNING] * 3
        nursery.cancel_scope.cancel()
    assert journal.events[3:] == ["stop c", "stop b", "stop a"]


async def test_one_for_one_restarts_only_the_crashed_child(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = probes(journal, "a", "b", "c")
    sup = Supervisor(children=specs([a, b, c]), limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await b.inbox.sender.send("crash")
        await journal.wait_count("start b", 2)
        assert journal.events[3:] == ["stop b", "start b"]
        assert root.children["b"].restarts == 1
        assert root.children["a"].restarts == 0
        nursery.cancel_scope.cancel()


async def test_rest_for_one_restarts_the_child_and_later_ones(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = probes(journal, "a", "b", "c")
    sup = Supervisor(children=specs([a, b, c]), strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await b.inbox.sender.send("crash")
        await journal.wait_count("start c", 2)
        assert journal.events[3:] == ["stop b", "stop c", "start b", "start c"]
        assert root.children["a"].restarts == 0
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class Provider(Actor):
    """Serves `Dependent`; on a message it goes down, waits till its dependent has ended (so
    the supervisor hears of the dependent's exit before its own), then crashes."""

    kind: ClassVar[str] = "provider"
    journal: Journal
    up: trio.Event = attrs.field(factory=trio.Event)
    down: trio.Event = attrs.field(factory=trio.Event)
    dependent_ended: trio.Event = attrs.field(factory=trio.Event)
    inbox: Inbox[str] = attrs.field(factory=Inbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.journal.record("start provider")
        self.down = trio.Event()
        self.up.set()
        task_status.started()
        try:
            await self.inbox.receiver.receive()
        finally:
            self.up = trio.Event()
            self.down.set()
        await self.dependent_ended.wait()
        raise RuntimeError("provider crashed on purpose")


@attrs.define(eq=False)
class Dependent(Actor):
    """Starts only once its provider is up, and crashes when the provider goes down (as the
    daemon's outbox does when the store it asks is not running)."""

    kind: ClassVar[str] = "dependent"
    journal: Journal
    provider: Provider

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.provider.up.wait()
        self.journal.record("start dependent")
        ended = self.provider.dependent_ended = trio.Event()
        task_status.started()
        try:
            await self.provider.down.wait()
        finally:
            ended.set()
        raise RuntimeError("dependent crashed: its provider is gone")


async def restart_in_order(
    journal: Journal,
    root: Node,
    earlier: tuple[str, Actor],
    later: tuple[str, Actor],
    crashing: Inbox[str],
) -> dict[str, int]:
    """Run `earlier`, `later` and a tail under a rest_for_one supervisor, crash the actor that
    reads `crashing`, and check that the tail stops and the three start again in order; the
    restarts each child counted."""
    tail = ProbeActor("tail", journal)
    children = [ChildSpec(*earlier), ChildSpec(*later), ChildSpec("tail", tail)]
    sup = Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await crashing.sender.send("crash")
        with trio.fail_after(60):
            await journal.wait_count("start tail", 2)
        assert journal.events[3:] == [
            "stop tail",
            f"start {earlier[0]}",
            f"start {later[0]}",
            "start tail",
        ]
        nursery.cancel_scope.cancel()
    return {name: node.restarts for name, node in root.children.items()}


async def test_a_rest_for_one_restart_starts_an_earlier_sibling_first_whatever_exit_came_first(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """CI's hang: the store crashed, the outbox (after it) crashed on finding it gone, and its
    exit was handled first; its shorter backoff ended first, and its start, asking the store
    not yet restarted, held the supervisor's loop, and so the store's restart, forever."""
    provider = Provider(journal)
    dependent = Dependent(journal, provider)
    await restart_in_order(
        journal, root, ("provider", provider), ("dependent", dependent), provider.inbox
    )


@attrs.define(eq=False)
class Answerer(Actor):
    """Answers each ask on its inbox, which outlives its restarts (as the store's does); a
    `None` in the inbox crashes it, leaving the asks queued behind for its next run. Its run
    `crashing` (none, unless told) crashes right after `started()`, with no checkpoint between:
    before its supervisor's loop has moved on from its start."""

    kind: ClassVar[str] = "answerer"
    journal: Journal
    crashing: int = 0
    runs: int = 0
    inbox: Inbox[Reply[str] | None] = attrs.field(factory=Inbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        self.journal.record("start answerer")
        task_status.started()
        if self.runs == self.crashing:
            raise RuntimeError("answerer crashed as it started")
        async for reply in self.inbox.receiver:
            if reply is None:
                raise RuntimeError("answerer crashed on purpose")
            reply.ok("answered")


@attrs.define(eq=False)
class Asker(Actor):
    """Asks its answerer before it starts (as `events` asks the store); its run `crashing`
    (its first restart, unless told) crashes the answerer first, so its ask waits for the
    answerer's restart, which only its supervisor's loop, busy starting it, can begin."""

    kind: ClassVar[str] = "asker"
    journal: Journal
    answerer: Answerer
    crashing: int = 2
    runs: int = 0
    inbox: Inbox[str] = attrs.field(factory=Inbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs == self.crashing:
            await self.answerer.inbox.send(None)
        try:
            await self.answerer.inbox.ask(lambda reply: reply, timeout=30.0, what="an answer")
        except AskTimeout:
            self.journal.record("asker gave up")
            raise
        self.journal.record("start asker")
        task_status.started()
        await self.inbox.receiver.receive()
        raise RuntimeError("asker crashed on purpose")


async def test_a_rest_for_one_start_is_abandoned_when_an_earlier_sibling_crashes_meanwhile(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """A start that waits for an earlier sibling which crashes meanwhile holds the loop, and so
    that sibling's restart, until the wait times out (the store crashing while `events` or
    `networks` asks it at start): the start is given up, and the sibling's restart starts both,
    in order, no crash charged to the one given up."""
    answerer = Answerer(journal)
    asker = Asker(journal, answerer)
    restarts = await restart_in_order(
        journal, root, ("answerer", answerer), ("asker", asker), asker.inbox
    )
    assert restarts == {"answerer": 1, "asker": 2, "tail": 2}


async def test_a_first_start_is_abandoned_when_an_earlier_sibling_crashes_meanwhile(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """The daemon's own start: the store crashes while `events`, starting, asks it. The ask held
    the supervisor, and so the store's restart, till it timed out, which failed the start and
    the tree. The start is given up, the store's restart starts it and the child after it, in
    order, and the supervisor has started once both have, neither counting a restart."""
    answerer = Answerer(journal)
    asker, tail = Asker(journal, answerer, crashing=1), ProbeActor("tail", journal)
    children = [ChildSpec("answerer", answerer), ChildSpec("asker", asker), ChildSpec("tail", tail)]
    sup = Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(PROMPT):
            await nursery.start(run_root, sup, root)
        assert journal.events == ["start answerer", "start answerer", "start asker", "start tail"]
        restarts = {name: node.restarts for name, node in root.children.items()}
        assert restarts == {"answerer": 1, "asker": 0, "tail": 0}
        nursery.cancel_scope.cancel()


async def test_a_first_start_waits_for_an_earlier_sibling_that_crashed_as_it_started(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """The store crashes right after its `started()`, before the supervisor's loop moves on: no
    start was under way to abandon, so `events` was started, and its ask of the store held the
    loop, and so the store's restart, till it timed out, failing the tree. It is held back, and
    the store's restart starts both, in order, neither a restart of `events`."""
    answerer = Answerer(journal, crashing=1)
    asker = Asker(journal, answerer, crashing=0)
    children = [ChildSpec("answerer", answerer), ChildSpec("asker", asker)]
    sup = Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(PROMPT):
            await nursery.start(run_root, sup, root)
        assert journal.events == ["start answerer", "start answerer", "start asker"]
        restarts = {name: node.restarts for name, node in root.children.items()}
        assert restarts == {"answerer": 1, "asker": 0}
        nursery.cancel_scope.cancel()


async def test_a_start_child_is_abandoned_when_an_earlier_sibling_crashes_meanwhile(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """A child added at runtime whose start asks an earlier sibling that crashes meanwhile: the
    asker of the start waited out that ask, and was told the start failed. It is answered at
    once, and the sibling's restart starts the child."""
    answerer = Answerer(journal)
    children = [ChildSpec("answerer", answerer)]
    sup = Supervisor(children=children, strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        with trio.fail_after(PROMPT):
            await sup.start_child(ChildSpec("asker", Asker(journal, answerer, crashing=1)))
            await journal.wait_count("start asker", 1)
        await trio.testing.wait_all_tasks_blocked()  # the supervisor marked it running
        assert journal.events == ["start answerer", "start answerer", "start asker"]
        assert root.children["asker"].state is ActorState.RUNNING
        nursery.cancel_scope.cancel()


async def test_a_child_ended_just_before_an_earlier_siblings_crash_stops_it_counts_once(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    """x crashes, then z (the outbox finding the store gone), both exits queued while a stop of
    w holds the loop. x's restart takes z with it; z's own exit, handled after, counted a second
    restart in the window and restarted z again, alone and after a longer backoff."""
    x, y, z = probes(journal, "x", "y", "z")
    w = ProbeActor("w", journal, cleanup_seconds=1.0)
    sup = Supervisor(children=specs([x, y, z, w]), strategy=Strategy.REST_FOR_ONE, limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        nursery.start_soon(sup.stop_child, "w")
        await trio.testing.wait_all_tasks_blocked()  # the loop waits out w's cleanup
        await x.inbox.sender.send("crash")
        await trio.testing.wait_all_tasks_blocked()  # x's exit is queued first
        await z.inbox.sender.send("crash")
        with trio.fail_after(PROMPT):
            await journal.wait_count("start z", 2)
        await trio.testing.wait_all_tasks_blocked()  # every exit is handled
        assert journal.events[-3:] == ["start x", "start y", "start z"]
        assert sup.figures()["restarts_in_window"] == 1
        assert root.children["z"].restarts == 1
        nursery.cancel_scope.cancel()


async def test_restart_waits_for_backoff(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    (a,) = probes(journal, "a")
    limits = RestartLimits(intensity=10, period=100.0, backoff_initial=2.0, backoff_max=5.0)
    sup = Supervisor(children=specs([a]), limits=limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        crashed_at = trio.current_time()
        await a.inbox.sender.send("crash")
        await journal.wait_count("start a", 2)
        assert trio.current_time() - crashed_at == pytest.approx(2.0)
        crashed_at = trio.current_time()
        await a.inbox.sender.send("crash")
        await journal.wait_count("start a", 3)
        assert trio.current_time() - crashed_at == pytest.approx(4.0)
        nursery.cancel_scope.cancel()


async def test_intensity_exceeded_escalates_to_the_parent(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    (a,) = probes(journal, "a")
    inner = Supervisor(children=specs([a]), limits=FAST)
    outer = Supervisor(
        children=[ChildSpec("inner", inner)], limits=RestartLimits(intensity=0, period=10.0)
    )

    async def crash_until_inner_gives_up() -> None:
        for crashes in range(1, FAST.intensity + 2):
            await a.inbox.sender.send("crash")
            if crashes <= FAST.intensity:
                await journal.wait_count("start a", crashes + 1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(crash_until_inner_gives_up)
        with pytest.raises(SupervisorEscalation, match=r"^root: more than 0 restarts") as caught:
            await run_root(outer, root)
    inner_failure = caught.value.__cause__
    assert isinstance(inner_failure, SupervisorEscalation)
    assert str(inner_failure).startswith("root/inner: more than 3 restarts in 10s, last by")
    assert journal.events.count("start a") == FAST.intensity + 1


@attrs.define(eq=False)
class StopWitness(Actor):
    """Runs till stopped and records how its first stop showed on its node: the state and
    whether for good (what a settled ask goes by)."""

    kind: ClassVar[str] = "witness"
    shown: tuple[ActorState, bool] | None = None
    stopped: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.stopped.set()
            if self.shown is None:
                node = current_node()
                self.shown = (node.state, node.stopping_for_good)


@pytest.mark.parametrize(
    ("crashed", "shown"),
    [
        ("first", (ActorState.RESTARTING, False)),  # inner is restarted as a later sibling
        ("second", (ActorState.RESTARTING, False)),  # inner gives up: root restarts it
        (None, (ActorState.STOPPING, True)),  # the tree stops
    ],
)
async def test_a_supervisors_children_stop_for_good_only_when_it_does(
    journal: Journal,
    root: Node,
    autojump_clock: trio.testing.MockClock,
    crashed: str | None,
    shown: tuple[ActorState, bool],
) -> None:
    first, second = probes(journal, "first", "second")
    witness = StopWitness()
    inner = Supervisor(
        children=[ChildSpec("second", second), ChildSpec("witness", witness)],
        strategy=Strategy.REST_FOR_ONE,
        limits=RestartLimits(intensity=0, period=10.0),
    )
    outer = Supervisor(
        children=[ChildSpec("first", first), ChildSpec("inner", inner)],
        strategy=Strategy.REST_FOR_ONE,
        limits=FAST,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, outer, root)
        if crashed is not None:
            await {"first": first, "second": second}[crashed].inbox.sender.send("crash")
            await witness.stopped.wait()
        nursery.cancel_scope.cancel()
    assert witness.shown == shown


async def test_transient_restarts_after_crash_but_not_after_normal_exit(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    (a,) = probes(journal, "a")
    sup = Supervisor(children=specs([a], Restart.TRANSIENT), limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await a.inbox.sender.send("crash")
        await journal.wait_count("start a", 2)
        await a.inbox.sender.send("exit")
        await journal.wait_count("stop a", 2)
        await trio.sleep(60)  # MockClock: any restart would have happened by now
        assert journal.events.count("start a") == 2
        assert "a" not in root.children
        nursery.cancel_scope.cancel()


async def test_temporary_child_is_never_restarted(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    (a,) = probes(journal, "a")
    sup = Supervisor(children=specs([a], Restart.TEMPORARY), limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await a.inbox.sender.send("crash")
        await journal.wait_count("stop a", 1)
        await trio.sleep(60)
        assert journal.events == ["start a", "stop a"]
        assert "a" not in root.children
        nursery.cancel_scope.cancel()


async def test_permanent_child_restarts_after_normal_exit(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    (a,) = probes(journal, "a")
    sup = Supervisor(children=specs([a]), limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await a.inbox.sender.send("exit")
        await journal.wait_count("start a", 2)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("restart", "level"),
    [(Restart.PERMANENT, "info"), (Restart.TRANSIENT, "debug"), (Restart.TEMPORARY, "debug")],
)
async def test_a_normal_exit_is_logged_at_info_only_when_it_restarts(
    journal: Journal,
    root: Node,
    autojump_clock: trio.testing.MockClock,
    restart: Restart,
    level: str,
) -> None:
    (a,) = probes(journal, "a")
    sup = Supervisor(children=specs([a], restart), limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        with structlog.testing.capture_logs() as logs:
            await a.inbox.sender.send("exit")
            await journal.wait_count("stop a", 1)
            await trio.testing.wait_all_tasks_blocked()  # the supervisor handled the exit
        exited = [(e["actor"], e["log_level"]) for e in logs if e["event"] == "actor exited"]
        assert exited == [("root/a", level)]
        nursery.cancel_scope.cancel()


async def test_shutdown_timeout_bounds_a_slow_cleanup(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    slow = ProbeActor("slow", journal, cleanup_seconds=1000.0)
    sup = Supervisor(children=[ChildSpec("slow", slow, shutdown_timeout=3.0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        began = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - began == pytest.approx(3.0)
    assert journal.events == ["start slow", "stop slow"]


async def test_dynamic_children_start_and_stop(journal: Journal, root: Node) -> None:
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await sup.start_child(ChildSpec("x", ProbeActor("x", journal), restart=Restart.TEMPORARY))
        assert root.children["x"].state is ActorState.RUNNING
        with pytest.raises(ValueError, match="already has a child named 'x'"):
            await sup.start_child(ChildSpec("x", ProbeActor("x", journal)))
        assert await sup.stop_child("x") is True
        assert await sup.stop_child("x") is False
        assert "x" not in root.children
        assert journal.events == ["start x", "stop x"]
        nursery.cancel_scope.cancel()


async def test_a_start_that_replaces_stops_the_child_of_that_name_first(
    journal: Journal, root: Node
) -> None:
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        old, new = ProbeActor("old", journal), ProbeActor("new", journal)
        await sup.start_child(ChildSpec("x", old, restart=Restart.TEMPORARY))
        await sup.start_child(ChildSpec("x", new, restart=Restart.TEMPORARY), replace=True)
        assert journal.events == ["start old", "stop old", "start new"]
        assert root.children["x"].state is ActorState.RUNNING
        await new.inbox.sender.send("exit")  # the node running is the new child's
        await journal.wait_count("stop new", 1)
        nursery.cancel_scope.cancel()


async def test_a_stop_sent_without_waiting_stops_the_child_unless_the_inbox_is_full(
    journal: Journal, root: Node
) -> None:
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        await sup.start_child(ChildSpec("x", ProbeActor("x", journal), restart=Restart.TEMPORARY))
        assert sup.stop_child_nowait("x") is True
        await journal.wait_count("stop x", 1)
        await trio.testing.wait_all_tasks_blocked()  # the supervisor forgets it once it ended
        assert "x" not in root.children
        nursery.cancel_scope.cancel()
    idle = Supervisor(inbox=Inbox(1))  # not running: nothing takes its requests
    assert idle.stop_child_nowait("x") is True
    assert idle.stop_child_nowait("x") is False


async def test_child_that_fails_to_start_is_reported_to_the_caller(
    journal: Journal, root: Node
) -> None:
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        with pytest.raises(ChildStartFailed, match="root/bad failed to start"):
            await sup.start_child(ChildSpec("bad", ProbeActor("bad", journal, fail_start=True)))
        assert "bad" not in root.children
        nursery.cancel_scope.cancel()


async def test_initial_child_failing_to_start_fails_the_supervisor(
    journal: Journal, root: Node
) -> None:
    good, bad = ProbeActor("good", journal), ProbeActor("bad", journal, fail_start=True)
    sup = Supervisor(children=specs([good, bad]))
    with pytest.raises(ChildStartFailed, match="root/bad failed to start"):
        await run_root(sup, root)
    assert journal.events == ["start good", "fail bad", "stop good"]


async def test_inspect_snapshot_shows_the_tree(journal: Journal, root: Node) -> None:
    sup = Supervisor(children=specs(probes(journal, "a")))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        snap = root.snapshot()
        assert snap["name"] == "root" and snap["state"] == "running"
        (child,) = snap["children"]
        assert child["path"] == "root/a"
        assert child["kind"] == "probe"
        assert child["inbox"] == {"used": 0, "size": 64, "waiting_senders": 0}
        assert snap["figures"]["strategy"] == "one_for_one"
        nursery.cancel_scope.cancel()
