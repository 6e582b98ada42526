"""A containing supervisor (`contains`): a child past the restart intensity is restarted alone,
with its own window and backoff, and never escalates."""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import ActorState, ChildSpec, Node, Supervisor, run_root
from tests.actors.conftest import FAST, Journal, ProbeActor


@attrs.define(eq=False)
class Containing(Supervisor):
    contains: ClassVar[bool] = True


async def test_a_child_crashing_past_the_intensity_is_restarted_alone(
    journal: Journal, root: Node, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = ProbeActor("a", journal), ProbeActor("b", journal)
    sup = Containing(children=[ChildSpec("a", a), ChildSpec("b", b)], limits=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, sup, root)
        crashes = 2 * FAST.intensity + 2
        for crash in range(1, crashes + 1):
            await a.inbox.sender.send("crash")
            await journal.wait_count("start a", crash + 1)
        assert root.children["a"].restarts == crashes
        assert sup.figures()["restarts_in_window"] == crashes  # a's own window (10 s)
        crashed_at = trio.current_time()
        await b.inbox.sender.send("crash")
        await journal.wait_count("start b", 2)
        assert trio.current_time() - crashed_at == pytest.approx(FAST.backoff_initial)  # its own
        assert root.state is ActorState.RUNNING
        assert journal.events.count("stop b") == 1  # only its own crash stopped it
        nursery.cancel_scope.cancel()
