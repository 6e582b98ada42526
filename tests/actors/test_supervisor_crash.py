"""Crash on request (`Node.request_crash`, behind the daemon's `debug_crash`): the actor fails
as a real crash would, so its restart type and its supervisor's strategy decide what follows."""

from __future__ import annotations

import structlog.testing
import trio
import trio.testing

from meshactors.actors import (
    ActorState,
    ChildSpec,
    DebugCrash,
    Node,
    Restart,
    Strategy,
    Supervisor,
    run_root,
)
from tests.actors.conftest import FAST, Journal, ProbeActor


async def test_a_crash_request_restarts_a_transient_child_as_a_crash_would(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = ProbeActor("a", journal), ProbeActor("b", journal)
    sup = Supervisor(
        children=[ChildSpec("a", a), ChildSpec("b", b, Restart.TRANSIENT)], limits=FAST
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        with structlog.testing.capture_logs() as logs:
            assert root.children["b"].request_crash("test")
            await journal.wait_count("start b", 2)
        assert journal.events[2:] == ["stop b", "start b"]
        assert root.children["b"].restarts == 1
        assert root.children["a"].restarts == 0
        crashed = [entry for entry in logs if entry["event"] == "actor crashed"]
        assert [entry["actor"] for entry in crashed] == ["root/b"]
        assert isinstance(crashed[0]["exc_info"], DebugCrash)
        nursery.cancel_scope.cancel()


async def test_a_crash_request_applies_the_strategy_deep_in_the_tree(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a, b, c = ProbeActor("a", journal), ProbeActor("b", journal), ProbeActor("c", journal)
    inner = Supervisor(
        children=[ChildSpec("b", b), ChildSpec("c", c)],
        strategy=Strategy.REST_FOR_ONE,
        limits=FAST,
    )
    sup = Supervisor(children=[ChildSpec("a", a), ChildSpec("inner", inner)], limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        node = root.find("root/inner/b")
        assert node is not None and node.request_crash("test")
        await journal.wait_count("start c", 2)
        assert journal.events[3:] == ["stop b", "stop c", "start b", "start c"]
        assert root.children["inner"].restarts == 0
        nursery.cancel_scope.cancel()


async def test_a_crashed_temporary_child_is_forgotten(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a = ProbeActor("a", journal)
    sup = Supervisor(children=[ChildSpec("a", a, Restart.TEMPORARY)], limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        assert root.children["a"].request_crash("test")
        await journal.wait_count("stop a", 1)
        await trio.testing.wait_all_tasks_blocked()  # the supervisor handled the exit
        assert "a" not in root.children
        nursery.cancel_scope.cancel()


async def test_only_a_running_supervised_actor_can_be_crashed(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a = ProbeActor("a", journal)
    sup = Supervisor(children=[ChildSpec("a", a)], limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        assert not root.request_crash("the root has no supervisor")
        node = root.children["a"]
        assert node.request_crash("first")
        assert node.request_crash("second, before the first took effect: the same crash")
        await journal.wait_count("start a", 2)
        await trio.testing.wait_all_tasks_blocked()  # the supervisor marked it running
        assert node.state is ActorState.RUNNING and node.restarts == 1
        assert node.request_crash("third: the new generation")
        await journal.wait_count("start a", 3)
        assert journal.events == ["start a", "stop a", "start a", "stop a", "start a"]
        nursery.cancel_scope.cancel()
    assert not node.request_crash("stopped")
