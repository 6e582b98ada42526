"""Received messages and acks that come in bursts of many store batches are each told
(`message`, `message_delivered`), even by an event log slower than the outbox: the outbox
waits until the event hub has numbered and logged one batch's events before it takes the
next, so none is dropped or left unlogged."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from meshactors import event_hub
from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.clock import wall_ms
from meshactors.daemon.outbox import (
    RECEIVE_BATCH,
    RECEIVE_QUEUE,
    SETTLE_BATCH,
    Outbox,
    _Acks,
)
from meshactors.event_hub import EventHub
from meshactors.identity import load_or_create_identity
from meshactors.network.manager import NetworkManager
from meshactors.network.message_frames import MAX_ACKS, Msg, MsgAck
from meshactors.store.actor import StoreActor
from meshactors.store.db import open_database
from meshactors.store.events import Event
from tests.store.test_outbox import send

BURST = RECEIVE_QUEUE  # messages received, and acks of our sends, all at once
BURST_WAIT = 60.0  # seconds the bursts may take to be stored, recorded and told
SLOW_LOG_BATCH = 16  # events the log writes per store call here: slower than the outbox
BURST_NET = "net1"
BURST_PEER = "dev-a"  # sends to it and messages from it


@attrs.define
class PacedOutbox:
    """An outbox with the store, event hub and network manager it needs, on one database."""

    hub: EventHub
    outbox: Outbox


@contextlib.asynccontextmanager
async def paced_outbox(tmp_path: Path) -> AsyncIterator[PacedOutbox]:
    """The outbox and the actors it needs, running until the block ends."""
    store = StoreActor(tmp_path / "state.db")
    hub = EventHub(store)
    identity = load_or_create_identity(tmp_path / "identity.key")
    networks = NetworkManager(identity=identity, store=store, events=hub)
    tree = Supervisor(
        children=[ChildSpec("store", store), ChildSpec("events", hub), ChildSpec("nets", networks)]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        outbox = Outbox(store, hub, networks)
        await nursery.start(run_root, outbox, Node(name="outbox", kind="outbox"))
        yield PacedOutbox(hub, outbox)
        nursery.cancel_scope.cancel()


async def test_bursts_of_received_messages_and_acks_are_each_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub holds a batch of each at once, no more; its log writes fewer events per call
    # than the outbox stores messages or acks, as a busy disk may make it.
    room = 2 * (RECEIVE_BATCH + SETTLE_BATCH)
    monkeypatch.setattr(event_hub, "HUB_INBOX", room)
    monkeypatch.setattr(event_hub, "PERSIST_QUEUE", room)
    monkeypatch.setattr(event_hub, "PERSIST_BATCH", SLOW_LOG_BATCH)
    with contextlib.closing(open_database(tmp_path / "state.db")) as conn:
        sent = [send(conn, client_message_id=f"s{n}", now_ms=wall_ms()).id for n in range(BURST)]
    async with paced_outbox(tmp_path) as paced:
        watch, _ = await paced.hub.subscribe(2 * BURST + 1)
        received = [Msg(f"r{n}", f"m{n}", "hi", None, "next", None, 0) for n in range(BURST)]
        paced.outbox._queue_received(BURST_NET, BURST_PEER, received)
        for first in range(0, BURST, MAX_ACKS):  # msg_acks frames, as a peer sends them
            acks = [MsgAck(row_id, "stored") for row_id in sent[first : first + MAX_ACKS]]
            paced.outbox._queue_acks(_Acks(BURST_NET, BURST_PEER, acks))
        told = {"message": 0, "message_delivered": 0}
        with trio.fail_after(BURST_WAIT):
            while sum(told.values()) < 2 * BURST:
                event = await watch.receive()
                assert isinstance(event, Event), event  # the watch itself never lags
                told[event.kind] = told.get(event.kind, 0) + 1
                figures = paced.hub.figures()
                assert (figures["dropped"], figures["unlogged"]) == (0, 0)
        assert told == {"message": BURST, "message_delivered": BURST}
