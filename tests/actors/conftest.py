"""ProbeActor actors that record their lifecycle, for supervisor tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs
import pytest
import trio

from meshactors.actors import Actor, Inbox, Node, RestartLimits, cleanup_scope

# the supervisor tests' restart limits: a short backoff the mock clock jumps, three restarts
FAST = RestartLimits(intensity=3, period=10.0, backoff_initial=0.1, backoff_max=1.0)


@attrs.define(eq=False)
class Journal:
    """An append-only list of lifecycle events that tests can wait on."""

    events: list[str] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def record(self, event: str) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[str]], bool]) -> None:
        while not predicate(self.events):
            await self._changed.wait()

    async def wait_count(self, event: str, count: int) -> None:
        await self.wait_for(lambda events: events.count(event) >= count)


@attrs.define(eq=False)
class ProbeActor(Actor):
    """Records start/stop; on command it crashes, exits or refuses to start."""

    kind: ClassVar[str] = "probe"
    name: str
    journal: Journal
    fail_start: bool = False
    cleanup_seconds: float = 0.0
    inbox: Inbox[str] = attrs.field(factory=Inbox)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.fail_start:
            self.journal.record(f"fail {self.name}")
            raise RuntimeError(f"{self.name} cannot start")
        self.journal.record(f"start {self.name}")
        task_status.started()
        try:
            async for command in self.inbox.receiver:
                if command == "crash":
                    raise RuntimeError(f"{self.name} crashed on purpose")
                if command == "exit":
                    return
        finally:
            with cleanup_scope():
                await trio.sleep(self.cleanup_seconds)
            self.journal.record(f"stop {self.name}")


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def root() -> Node:
    return Node(name="root", kind="supervisor")
