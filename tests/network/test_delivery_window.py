"""Durable delivery pipelines: a window of messages is in flight to a peer before its first
ack, acks of one stored batch come back in one `msg_acks` frame, and messages whose acks
were lost are sent again and end delivered once. The peer is hand-made (tests/network/
rawpeer.py), so the test sees every frame the daemon seals to it and acks as it chooses."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest
import trio

from meshactors.daemon.outbox import PEER_WINDOW, Outbox
from meshactors.network.message_frames import (
    BATCH_BYTES,
    BATCH_META_DEPTH,
    MAX_ACKS,
    MAX_BATCH_MSGS,
    Msg,
    MsgAck,
    MsgAcks,
    MsgBatch,
    batches,
)
from meshactors.store import outbox as outbox_db
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH
from meshactors.wire.peer import (
    Approval,
    BadPeerFrame,
    Frame,
    decode_frame,
    encode_for,
    encode_frame,
)
from tests.network.conftest import NET, WAIT, Daemon, Mesh, OpFailed
from tests.network.rawpeer import RawPeer, approved_raw_peer
from tests.network.test_delivery import outbox_row

EXTRA = 8  # messages beyond the window


async def next_of(raw: RawPeer, *kinds: type[Frame]) -> Frame:
    """The next frame of one of `kinds` the raw peer reads (hellos, pings ... are skipped)."""
    while True:
        _, frame = await raw.receive()
        if isinstance(frame, kinds):
            return frame


async def msgs(raw: RawPeer, refs: int) -> dict[str, Msg]:
    """Read `msg` frames until `refs` distinct sends arrived; by ref (a copy counts once)."""
    seen: dict[str, Msg] = {}
    with trio.fail_after(WAIT):
        while len(seen) < refs:
            frame = await next_of(raw, Msg, MsgBatch)
            for msg in frame.msgs if isinstance(frame, MsgBatch) else [frame]:
                assert isinstance(msg, Msg)
                seen[msg.ref] = msg
    return seen


async def send_many(daemon: Daemon, to: str, count: int) -> list[str]:
    """Accept `count` durable sends to `to`; their outbox row ids."""
    return [
        (await daemon.call("send", network=NET, to=to, message=f"m{n}"))["id"] for n in range(count)
    ]


async def outbox_to_raw_peer(mesh: Mesh, nursery: trio.Nursery) -> tuple[Daemon, RawPeer, Outbox]:
    """A daemon, a hand-made peer it approved, and the daemon's outbox actor."""
    b, raw = await approved_raw_peer(mesh, nursery)
    outbox = b.services.outbox
    assert isinstance(outbox, Outbox)
    return b, raw, outbox


def delivered_ids(daemon: Daemon) -> collections.Counter[str]:
    return collections.Counter(e["id"] for e in daemon.events if e["kind"] == "message_delivered")


async def test_a_window_is_in_flight_before_the_first_ack_and_lost_acks_end_delivered_once(
    nursery: trio.Nursery, mesh: Mesh
) -> None:
    b, raw, outbox = await outbox_to_raw_peer(mesh, nursery)
    ids = await send_many(b, raw.device_id, PEER_WINDOW + EXTRA)

    window = await msgs(raw, PEER_WINDOW)  # all of them before any ack
    assert outbox.figures()["inflight"] == PEER_WINDOW
    assert outbox.figures()["delivered"] == 0
    acks = [MsgAck(ref, "stored") for ref in window]
    for start in range(0, len(acks), MAX_ACKS):  # as a recipient acks its stored batches
        await raw.send_frame(b.device_id, MsgAcks(acks[start : start + MAX_ACKS]))
    rest = await msgs(raw, EXTRA)  # each ack freed a place for one more
    assert set(window) | set(rest) == set(ids)

    # The acks of the rest are lost: the peer leaves and comes back, and they come again.
    before = b.last_event_id
    await raw.send_frame(b.device_id, Approval("pending"))
    await b.wait_event("peer_pending", after=before, device_id=raw.device_id)
    await raw.send_frame(b.device_id, Approval("approved"))
    again = await msgs(raw, EXTRA)
    assert set(again) == set(rest)
    await raw.send_frame(b.device_id, MsgAcks([MsgAck(ref, "duplicate") for ref in again]))

    with trio.fail_after(WAIT):
        while set(delivered_ids(b)) != set(ids):
            await b.wait_event("message_delivered", after=b.last_event_id)
    assert set(delivered_ids(b).values()) == {1}  # each delivered once
    counts = await b.services.store.call(outbox_db.delivery_counts, what="count deliveries")
    assert counts == {"pending": 0, "inflight": 0, "done": len(ids), "dead": 0}


async def test_an_ack_that_comes_twice_delivers_once(nursery: trio.Nursery, mesh: Mesh) -> None:
    b, raw, outbox = await outbox_to_raw_peer(mesh, nursery)
    acked, refused = await send_many(b, raw.device_id, 2)
    await msgs(raw, 2)

    # The recipient acks a redelivery of what it stored as `duplicate`: a second ack for a
    # delivery already done, with no attempt waiting for it. The refusal after it is a
    # barrier: acks are recorded in the order they came, so its `message_dead` comes after.
    await raw.send_frame(b.device_id, MsgAck(acked, "stored"))
    await raw.send_frame(b.device_id, MsgAck(acked, "duplicate"))
    await raw.send_frame(b.device_id, MsgAck(refused, "rejected", "invalid_message"))
    await b.wait_event("message_dead", id=refused)

    assert delivered_ids(b) == {acked: 1}
    assert outbox.figures()["delivered"] == 1


async def test_the_acks_of_a_stored_batch_come_back_together(
    nursery: trio.Nursery, mesh: Mesh
) -> None:
    b, raw = await approved_raw_peer(mesh, nursery)
    frames = [Msg(f"ref{n}", f"key{n}", f"m{n}", None, "next", None, 1) for n in range(PEER_WINDOW)]
    for frame in frames:  # they queue while the first store call runs: stored in few batches
        await raw.send_frame(b.device_id, frame)

    acks: list[MsgAck] = []
    ack_frames = 0
    with trio.fail_after(WAIT):
        while len(acks) < len(frames):
            frame = await next_of(raw, MsgAck, MsgAcks)
            ack_frames += 1
            if isinstance(frame, MsgAcks):
                acks.extend(frame.acks)
            elif isinstance(frame, MsgAck):
                acks.append(frame)
    assert sorted(ack.ref for ack in acks) == sorted(frame.ref for frame in frames)
    assert {ack.status for ack in acks} == {"stored"}
    assert ack_frames < len(frames)  # one frame per stored batch, not one per message


def test_msg_acks_round_trip_and_go_as_single_acks_to_a_peer_without_the_feature() -> None:
    acks = MsgAcks([MsgAck("r1", "stored"), MsgAck("r2", "rejected", "invalid_message")])
    assert decode_frame(encode_frame(acks)) == acks
    assert encode_for(acks, ["messages"]) == [encode_frame(ack) for ack in acks.acks]
    for bad in ([], [{"ref": "r1", "status": "lost"}], [{"ref": "r", "status": "stored"}] * 257):
        with pytest.raises(BadPeerFrame):
            decode_frame(json.dumps({"t": "msg_acks", "acks": bad}).encode())


def _msg(n: int, text: str = "hi") -> Msg:
    return Msg(f"ref{n}", f"key{n}", text, None, "next", None, 1)


def test_msg_batch_round_trips_and_goes_as_single_msgs_to_a_peer_without_the_feature() -> None:
    batch = MsgBatch([_msg(1), _msg(2, "two")])
    assert decode_frame(encode_frame(batch)) == batch
    assert encode_for(batch, ["messages"]) == [encode_frame(m) for m in batch.msgs]
    good = json.loads(encode_frame(_msg(1)))
    del good["t"]
    for bad in ([], [good] * (MAX_BATCH_MSGS + 1), [{**good, "priority": "urgent"}], [7]):
        with pytest.raises(BadPeerFrame):
            decode_frame(json.dumps({"t": "msg_batch", "msgs": bad}).encode())


def test_a_batch_too_large_for_one_frame_goes_in_halves() -> None:
    big = MsgBatch([_msg(n, "x" * 100_000) for n in range(4)])  # ~400 KB of JSON
    parts = [decode_frame(data) for data in encode_for(big, ["msg_batch"])]
    assert all(isinstance(part, MsgBatch) for part in parts)
    assert [m for part in parts if isinstance(part, MsgBatch) for m in part.msgs] == big.msgs
    assert len(parts) > 1


def test_batches_pack_in_order_by_count_and_size() -> None:
    small = [_msg(n) for n in range(MAX_BATCH_MSGS + 1)]
    assert [len(b.msgs) for b in batches(small)] == [MAX_BATCH_MSGS, 1]
    large = [_msg(n, "x" * (BATCH_BYTES // 2)) for n in range(3)]
    packed = batches(large)
    assert [len(b.msgs) for b in packed] == [2, 1]
    assert [m for b in packed for m in b.msgs] == large
    assert batches([]) == []


def _nested(depth: int) -> dict[str, Any]:
    """A meta object nested `depth` levels deep."""
    meta: dict[str, Any] = {}
    for _ in range(depth - 1):
        meta = {"k": meta}
    return meta


@pytest.mark.parametrize("depth", [BATCH_META_DEPTH - 1, BATCH_META_DEPTH])
def test_a_meta_deep_enough_for_a_batch_goes_in_one(depth: int) -> None:
    deep = Msg("ref-deep", "key-deep", "hi", _nested(depth), "next", None, 1)
    (frame,) = batches([_msg(1), deep])
    assert decode_frame(encode_frame(frame)) == MsgBatch([_msg(1), deep])


@pytest.mark.parametrize("depth", [BATCH_META_DEPTH + 1, MAX_JSON_DEPTH - 1])
def test_a_meta_too_deep_for_a_batch_goes_alone_and_still_decodes(depth: int) -> None:
    lone = Msg("ref-deep", "key-deep", "hi", _nested(depth), "next", None, 1)
    frames = batches([_msg(1), lone, _msg(2)])
    assert frames == [MsgBatch([_msg(1)]), lone, MsgBatch([_msg(2)])]
    assert decode_frame(encode_frame(lone)) == lone
    with pytest.raises(BadPeerFrame):
        decode_frame(encode_frame(MsgBatch([lone])))


async def test_places_held_for_a_refused_or_repeated_send_are_given_back(
    nursery: trio.Nursery, mesh: Mesh
) -> None:
    b, raw, outbox = await outbox_to_raw_peer(mesh, nursery)
    sent = await b.call("send", network=NET, to=raw.device_id, message="one", client_message_id="k")
    assert sent["status"] == "inflight"
    with pytest.raises(OpFailed):  # the same key for another message: refused
        await b.call("send", network=NET, to=raw.device_id, message="two", client_message_id="k")
    again = await b.call(
        "send", network=NET, to=raw.device_id, message="one", client_message_id="k"
    )
    assert (again["id"], again["status"]) == (sent["id"], "inflight")
    assert outbox.figures()["inflight"] == 1  # only the one claimed: the rest given back
    (ref,) = await msgs(raw, 1)
    await raw.send_frame(b.device_id, MsgAcks([MsgAck(ref, "stored")]))
    await b.wait_event("message_delivered", id=sent["id"])
    assert outbox.figures()["inflight"] == 0


async def test_a_row_aborted_in_flight_is_not_sent_again_and_its_late_ack_changes_no_status(
    nursery: trio.Nursery, mesh: Mesh
) -> None:
    b, raw, outbox = await outbox_to_raw_peer(mesh, nursery)
    (aborted,) = await send_many(b, raw.device_id, 1)
    await msgs(raw, 1)  # the outbox is sending it: the attempt is out, its ack not yet back
    answer = await b.call("outbox_abort", outbox_id=aborted)
    assert answer["row"]["status"] == "aborted"
    await b.wait_event("message_dead", id=aborted, error="aborted")

    # The peer leaves and comes back: an attempt in flight would be due again at once.
    before = b.last_event_id
    await raw.send_frame(b.device_id, Approval("pending"))
    await b.wait_event("peer_pending", after=before, device_id=raw.device_id)
    await raw.send_frame(b.device_id, Approval("approved"))
    await b.wait_event("peer_active", after=before, device_id=raw.device_id)
    (later,) = await send_many(b, raw.device_id, 1)
    assert list(await msgs(raw, 1)) == [later]  # queued behind the aborted one: not resent

    # The first attempt's ack still comes: the delivery is done, the row stays aborted.
    await raw.send_frame(b.device_id, MsgAcks([MsgAck(aborted, "stored"), MsgAck(later, "stored")]))
    await b.wait_event("message_delivered", id=later)
    await b.wait_event("message_delivered", id=aborted)
    row = await outbox_row(b, aborted)
    assert row["status"] == "aborted"
    assert [(d["status"], d["last_error"]) for d in row["deliveries"]] == [("done", "aborted")]
    assert outbox.figures()["inflight"] == 0
    assert b.crashes() == {}


async def test_a_requeued_dead_row_leaves_at_once_for_an_active_peer(
    nursery: trio.Nursery, mesh: Mesh
) -> None:
    # The op rings the outbox's doorbell: with nothing else due, the outbox would otherwise
    # look again only at its idle poll, a minute away (longer than WAIT).
    b, raw, _ = await outbox_to_raw_peer(mesh, nursery)
    (refused,) = await send_many(b, raw.device_id, 1)
    await msgs(raw, 1)
    await raw.send_frame(b.device_id, MsgAck(refused, "rejected", "invalid_message"))
    await b.wait_event("message_dead", id=refused)

    answer = await b.call("outbox_requeue", outbox_id=refused)
    assert list(await msgs(raw, 1)) == [answer["row"]["id"]]
