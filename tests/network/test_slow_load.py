"""A start whose store call the store answers only after STORE_CALL_TIMEOUT (a long fsync, a
busy disk) crashes nothing: the network manager's load of the saved networks is its own work,
which waits for the store however long it takes (`StoreActor.background_call`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors.actors import ActorState
from meshactors.store import networks as network_db
from tests.daemon.outbox_parts import HeldStoreCall, outbox_parts, past_the_deadline


async def test_a_manager_load_slower_than_the_store_deadline_starts_it_unrestarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """Given up at the deadline, the load failed the manager's first start (the daemon's),
    and at a restart crashed it again, restarting every network."""
    held = HeldStoreCall.hold(monkeypatch, network_db, "load_networks")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(past_the_deadline, held, mock_clock)
        async with outbox_parts(tmp_path) as parts:  # started: the tree's start waited
            nets = parts.tree_node.children["nets"]
            assert (nets.state, nets.restarts) == (ActorState.RUNNING, 0)
