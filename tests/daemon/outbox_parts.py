"""An outbox's actors on one database, in this trio run: the tests of tests/daemon that drive
an outbox by hand share them."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import ChildSpec, Node, Strategy, Supervisor, run_root
from meshactors.clock import wall_ms
from meshactors.daemon.outbox import Outbox
from meshactors.event_hub import EventHub
from meshactors.identity import load_or_create_identity
from meshactors.network.manager import NetworkManager
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import STORE_CALL_TIMEOUT, StoreActor
from meshactors.store.db import open_database
from meshactors.store.outbox import EXPIRED, TTL_MS, DeliveryKey
from tests.store.test_outbox import send

PAST_TTL_MS = 3_600_000  # how long past its TTL the send that dies untold was
HELD_WAIT = 10.0  # longest a held store call holds the store's thread: a failing test ends


def any_call(params: Mapping[str, Any], result: object) -> bool:
    """Hold the first call, whatever it carries and returns."""
    return True


@attrs.define(eq=False)
class HeldStoreCall:
    """Stands in for a store function (`hold` puts it in place): each call runs and says so
    (`called`, which a test may set anew; returned or raised); the first whose keyword arguments
    and result `holds` picks says so too (`holding`) and then holds its answer in the store's
    thread until `release`, as a slow store (a long fsync, a busy disk) or a stop's timing would."""

    real: Callable[..., Any]
    holds: Callable[[Mapping[str, Any], Any], bool] = any_call
    called: trio.Event = attrs.field(factory=trio.Event)
    holding: trio.Event = attrs.field(factory=trio.Event)
    release: threading.Event = attrs.field(factory=threading.Event)
    _held: bool = attrs.field(default=False, init=False)  # read and set in the store's thread

    @classmethod
    def hold(
        cls,
        monkeypatch: pytest.MonkeyPatch,
        module: ModuleType,
        name: str,
        holds: Callable[[Mapping[str, Any], Any], bool] = any_call,
    ) -> HeldStoreCall:
        """Put a held call in place of `module.name` for the test."""
        held = cls(getattr(module, name), holds)
        monkeypatch.setattr(module, name, held)
        return held

    def __call__(self, conn: sqlite3.Connection, **params: Any) -> Any:
        try:
            result = self.real(conn, **params)
        finally:
            trio.from_thread.run_sync(self.called.set)
        if not self._held and self.holds(params, result):
            self._held = True
            trio.from_thread.run_sync(self.holding.set)
            self.release.wait(HELD_WAIT)  # bounded: a failing test cannot hang the store
        return result


async def past_the_deadline(held: HeldStoreCall, clock: trio.testing.MockClock) -> None:
    """Once `held` holds, move the clock past STORE_CALL_TIMEOUT while the store holds it, then
    release it and let the clock run (the waits that follow are bounded)."""
    with trio.fail_after(HELD_WAIT):
        await held.holding.wait()
    await trio.testing.wait_all_tasks_blocked()  # every call made meanwhile waits for the store
    clock.jump(STORE_CALL_TIMEOUT + 1)
    await trio.testing.wait_all_tasks_blocked()  # every wait is past its deadline
    held.release.set()
    clock.rate = 1


@attrs.define
class OutboxParts:
    """The store, event hub and network manager an outbox needs, running in `nursery` under
    `tree`, a supervisor that restarts what follows a crashed child as the daemon's root does."""

    store: StoreActor
    hub: EventHub
    networks: NetworkManager
    nursery: trio.Nursery
    tree: Supervisor
    tree_node: Node

    async def start_outbox(self) -> Outbox:
        """An outbox on these parts, started now: a test may subscribe to the hub first."""
        outbox = Outbox(self.store, self.hub, self.networks)
        await self.nursery.start(run_root, outbox, Node(name="outbox", kind="outbox"))
        return outbox

    async def supervise_outbox(self) -> Node:
        """An outbox on these parts, started now as the tree's last child, so a crash of the
        store restarts it after the store as the daemon's root does; its node."""
        await self.tree.start_child(
            ChildSpec("outbox", Outbox(self.store, self.hub, self.networks))
        )
        return self.tree_node.children["outbox"]


@contextlib.asynccontextmanager
async def outbox_parts(tmp_path: Path) -> AsyncIterator[OutboxParts]:
    """The actors an outbox needs on `tmp_path`'s state.db, running until the block ends."""
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    identity = load_or_create_identity(tmp_path / "identity.key")
    networks = NetworkManager(identity=identity, store=store, events=hub)
    tree = Supervisor(
        children=[ChildSpec("store", store), ChildSpec("events", hub), ChildSpec("nets", networks)],
        strategy=Strategy.REST_FOR_ONE,
    )
    tree_node = Node(name="tree", kind="supervisor")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, tree_node)
        yield OutboxParts(store, hub, networks, nursery, tree, tree_node)
        nursery.cancel_scope.cancel()


def stops_seen(monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """An event set once a stop cancels the run of an outbox (any daemon's: the tests stop
    one at a time): the run is wrapped with a task beside it, in the outbox's scope, that
    waits for that cancel."""
    real = Outbox.run
    stopped = trio.Event()

    async def wait_for_the_stop() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    async def run(
        outbox: Outbox,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_the_stop)
            await real(outbox, task_status=task_status)

    monkeypatch.setattr(Outbox, "run", run)
    return stopped


def untold_expired(tmp_path: Path) -> list[tuple[DeliveryKey, str]]:
    """A send to dev-a committed dead past its TTL and left untold, as a stop leaves it, in
    `tmp_path`'s state.db: the `untold_deaths` it makes."""
    with contextlib.closing(open_database(tmp_path / "state.db")) as conn:
        old = send(conn, recipients=["dev-a"], now_ms=wall_ms() - TTL_MS - PAST_TTL_MS)
        outbox_db.expire_pending(conn, now_ms=wall_ms())
    return [(DeliveryKey(old.id, "dev-a"), EXPIRED)]


async def stored_untold(parts: OutboxParts) -> list[tuple[DeliveryKey, str]]:
    """The deaths the store holds untold (up to 10)."""
    untold: list[tuple[DeliveryKey, str]] = await parts.store.call(
        functools.partial(outbox_db.untold_deaths, limit=10), what="test: read untold"
    )
    return untold
