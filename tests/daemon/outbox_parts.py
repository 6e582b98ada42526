"""An outbox's actors on one database, in this trio run: the tests of tests/daemon that drive
an outbox by hand share them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import trio
import trio.testing

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.daemon.outbox import Outbox
from meshactors.event_hub import EventHub
from meshactors.identity import load_or_create_identity
from meshactors.network.manager import NetworkManager
from meshactors.store.actor import StoreActor


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
