"""An outbox's actors on one database, in this trio run: the tests of tests/daemon that drive
an outbox by hand share them."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio
import trio.testing

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.clock import wall_ms
from meshactors.daemon.outbox import Outbox
from meshactors.event_hub import EventHub
from meshactors.identity import load_or_create_identity
from meshactors.network.manager import NetworkManager
from meshactors.store import outbox as outbox_db
from meshactors.store.actor import StoreActor
from meshactors.store.db import open_database
from meshactors.store.outbox import EXPIRED, TTL_MS, DeliveryKey
from tests.store.test_outbox import send

PAST_TTL_MS = 3_600_000  # how long past its TTL the send that dies untold was


@attrs.define
class OutboxParts:
    """The store, event hub and network manager an outbox needs, running in `nursery`."""

    store: StoreActor
    hub: EventHub
    networks: NetworkManager
    nursery: trio.Nursery

    async def start_outbox(self) -> Outbox:
        """An outbox on these parts, started now: a test may subscribe to the hub first."""
        outbox = Outbox(self.store, self.hub, self.networks)
        await self.nursery.start(run_root, outbox, Node(name="outbox", kind="outbox"))
        return outbox


@contextlib.asynccontextmanager
async def outbox_parts(tmp_path: Path) -> AsyncIterator[OutboxParts]:
    """The actors an outbox needs on `tmp_path`'s state.db, running until the block ends."""
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    identity = load_or_create_identity(tmp_path / "identity.key")
    networks = NetworkManager(identity=identity, store=store, events=hub)
    tree = Supervisor(
        children=[ChildSpec("store", store), ChildSpec("events", hub), ChildSpec("nets", networks)]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        yield OutboxParts(store, hub, networks, nursery)
        nursery.cancel_scope.cancel()


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
