"""Received messages and acks that come in bursts of many store batches are each told
(`message`, `message_delivered`), even by an event log slower than the outbox: the outbox
waits until the event hub has numbered and logged one batch's events before it takes the
next, so none is dropped or left unlogged."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio

from meshactors import event_hub
from meshactors.clock import wall_ms
from meshactors.daemon.outbox import (
    RECEIVE_BATCH,
    RECEIVE_QUEUE,
    SETTLE_BATCH,
    _Acks,
)
from meshactors.network.message_frames import MAX_ACKS, Msg, MsgAck
from meshactors.store.db import open_database
from meshactors.store.events import Event
from tests.daemon.outbox_parts import outbox_parts
from tests.store.test_outbox import send

BURST = RECEIVE_QUEUE  # messages received, and acks of our sends, all at once
BURST_WAIT = 60.0  # seconds the bursts may take to be stored, recorded and told
SLOW_LOG_BATCH = 16  # events the log writes per store call here: slower than the outbox
BURST_NET = "net1"
BURST_PEER = "dev-a"  # sends to it and messages from it


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
    async with outbox_parts(tmp_path) as parts:
        outbox = await parts.start_outbox()
        watch, _ = await parts.hub.subscribe(2 * BURST + 1)
        received = [Msg(f"r{n}", f"m{n}", "hi", None, "next", None, 0) for n in range(BURST)]
        outbox._queue_received(BURST_NET, BURST_PEER, received)
        for first in range(0, BURST, MAX_ACKS):  # msg_acks frames, as a peer sends them
            acks = [MsgAck(row_id, "stored") for row_id in sent[first : first + MAX_ACKS]]
            outbox._queue_acks(_Acks(BURST_NET, BURST_PEER, acks))
        told = {"message": 0, "message_delivered": 0}
        with trio.fail_after(BURST_WAIT):
            while sum(told.values()) < 2 * BURST:
                event = await watch.receive()
                assert isinstance(event, Event), event  # the watch itself never lags
                told[event.kind] = told.get(event.kind, 0) + 1
                figures = parts.hub.figures()
                assert (figures["dropped"], figures["unlogged"]) == (0, 0)
        assert told == {"message": BURST, "message_delivered": BURST}
