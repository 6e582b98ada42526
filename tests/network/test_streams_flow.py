"""The streams part alone, on a recording peer layer: a peer that breaks a stream's rules (data
beyond its credit or out of sequence, credit beyond the window, frames for no stream) resets
that stream or is counted, and never crashes core."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.network.app_wire import AppWire, Postbox
from meshactors.network.stream_frames import (
    STREAM_WINDOW_BYTES,
    StreamCredit,
    StreamData,
    StreamEnd,
    StreamOpen,
    StreamReady,
    StreamReset,
)
from meshactors.network.stream_pipe import STREAM_FRAME_COST, Pipe, frame_cost
from meshactors.network.stream_table import CREDIT_RETURN, MAX_STREAMS
from meshactors.network.streams import Streams
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Frame
from meshactors.wire.pipe_frames import END, MAX_STREAM_FRAME_BYTES, Item, Reset
from tests.network.conftest import WAIT
from tests.network.peerstandin import RecordingPeers
from tests.network.test_rpc_flow import PEER, RecordingConnection, run_now

ME = "own-device"
WIRE_ID = "ab" * 16


@attrs.define
class ServedStreams:
    streams: Streams
    peers: RecordingPeers
    owner: RecordingConnection


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[ServedStreams]:
    peers, owner = RecordingPeers([PEER]), RecordingConnection()
    streams = Streams("net", AppWire(peers, ME), run_now, lambda m: owner if m == "files" else None)
    await nursery.start(streams.run)
    yield ServedStreams(streams, peers, owner)


async def accepted(served: ServedStreams) -> Pipe:
    """A stream PEER opened to `files`, accepted here."""
    served.peers.deliver(StreamOpen(WIRE_ID, "files", 30_000))
    kind, offer = served.owner.pushed[-1]
    assert kind == "stream_incoming" and offer["from"] == PEER
    pipe = await served.streams.accept(offer["stream_id"], "c1")
    assert served.peers.of(StreamReady) == [StreamReady(WIRE_ID)]
    return pipe


async def resets(served: ServedStreams) -> list[Any]:
    await trio.testing.wait_all_tasks_blocked()
    return [frame.error.code for frame in served.peers.of(StreamReset)]


async def test_data_in_sequence_within_credit_reaches_the_connection(served: ServedStreams) -> None:
    pipe = await accepted(served)
    served.peers.deliver(StreamData(WIRE_ID, True, 1, b"abc"))
    served.peers.deliver(StreamEnd(WIRE_ID, True, 1))
    assert [pipe.to_socket.receive_nowait(), pipe.to_socket.receive_nowait()] == [b"abc", END]
    assert await resets(served) == []


@pytest.mark.parametrize(
    "frame",
    [
        StreamData(WIRE_ID, True, 1, b"x" * STREAM_WINDOW_BYTES),  # beyond the credit
        StreamData(WIRE_ID, True, 2, b"x"),  # a frame skipped
        StreamCredit(WIRE_ID, True, 1),  # credit beyond the window
        StreamEnd(WIRE_ID, True, 5),  # an end after frames that never came
    ],
)
async def test_a_peer_breaking_the_rules_resets_the_stream(
    served: ServedStreams, frame: Any
) -> None:
    pipe = await accepted(served)
    served.peers.deliver(frame)
    assert await resets(served) == ["protocol"]
    item = pipe.to_socket.receive_nowait()
    assert isinstance(item, Reset) and item.code == "protocol"
    assert served.streams.figures()["open"] == 0


async def test_frames_for_no_stream_are_counted_not_acted_on(served: ServedStreams) -> None:
    served.peers.deliver(StreamData(WIRE_ID, True, 1, b"x"))
    served.peers.deliver(StreamReady(WIRE_ID))
    served.peers.deliver(StreamCredit(WIRE_ID, False, 10))
    assert served.streams.figures()["counters"]["stray_frames"] == 3
    assert await resets(served) == []


async def test_credit_crossing_the_end_of_a_request_reply_stream_is_not_stray(
    served: ServedStreams,
) -> None:
    """The peer sends its request and end; the program answers and ends, which finishes the
    stream here. The peer's credit for the answer, sent before our end reached it, arrives
    after: it crossed the end and is dropped as late, not stray; a frame for a stream never
    known still counts as stray."""
    pipe = await accepted(served)
    served.peers.deliver(StreamData(WIRE_ID, True, 1, b"request"))
    served.peers.deliver(StreamEnd(WIRE_ID, True, 1))
    assert [pipe.to_socket.receive_nowait(), pipe.to_socket.receive_nowait()] == [b"request", END]
    await pipe.consumed.send(frame_cost(b"request"))  # the connection wrote it
    await pipe.from_socket.send(b"reply")
    await pipe.from_socket.send(END)
    await trio.testing.wait_all_tasks_blocked()
    assert served.streams.figures()["counters"]["finished"] == 1
    served.peers.deliver(StreamCredit(WIRE_ID, True, frame_cost(b"reply")))
    counters = served.streams.figures()["counters"]
    assert counters.get("stray_frames", 0) == 0 and counters["late_frames"] == 1
    served.peers.deliver(StreamCredit("cd" * 16, True, 10))
    assert served.streams.figures()["counters"]["stray_frames"] == 1
    assert await resets(served) == []


async def test_an_open_to_a_full_table_is_refused_naming_the_limit_and_the_peer(
    served: ServedStreams,
) -> None:
    """The opener learns who is busy and why (docs/protocol.md, "Binary streams"), not a bare
    `too many streams open`."""
    for number in range(MAX_STREAMS):
        served.peers.deliver(StreamOpen(f"{number:032x}", "files", 30_000))
    assert served.streams.figures()["open"] == MAX_STREAMS
    served.peers.deliver(StreamOpen(WIRE_ID, "files", 30_000))
    await trio.testing.wait_all_tasks_blocked()
    (refusal,) = [frame.error for frame in served.peers.of(StreamReset)]
    said = f"busy: {ME} has {MAX_STREAMS} streams open in net, its limit (MAX_STREAMS; "
    assert refusal.code == "remote_error" and refusal.message.startswith(said)


async def test_data_before_the_accept_is_dropped(served: ServedStreams) -> None:
    served.peers.deliver(StreamOpen(WIRE_ID, "files", 30_000))
    served.peers.deliver(StreamData(WIRE_ID, True, 1, b"early"))
    assert served.streams.figures()["counters"]["stray_frames"] == 1


async def test_an_open_for_a_method_nobody_serves_is_refused(served: ServedStreams) -> None:
    served.peers.deliver(StreamOpen(WIRE_ID, "other", 30_000))
    assert await resets(served) == ["no_handler"]
    assert served.owner.pushed == []


async def test_an_offer_nobody_accepts_goes_after_the_openers_timeout(
    served: ServedStreams, autojump_clock: trio.testing.MockClock
) -> None:
    served.peers.deliver(StreamOpen(WIRE_ID, "files", 5_000))
    _kind, offer = served.owner.pushed[-1]
    await trio.sleep(4)
    assert served.streams.figures()["open"] == 1
    await trio.sleep(2)
    assert await resets(served) == ["timeout"]
    assert served.streams.figures()["open"] == 0
    with pytest.raises(OpError) as late:
        await served.streams.accept(offer["stream_id"], "c1")
    assert late.value.code is ErrorCode.UNKNOWN_REQUEST


def _lane_full(_fn: Callable[[], None]) -> bool:
    """Core's `tell` while its request lane is full: the word never arrives."""
    return False


async def test_an_offer_of_ours_goes_after_its_timeout_when_the_op_could_not_say_so(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peers = RecordingPeers([PEER])
    streams = Streams("net", AppWire(peers, ME), _lane_full, lambda _m: None)
    await nursery.start(streams.run)
    ready = await streams.open(PEER, "files", 5_000, "c1")
    with trio.move_on_after(5):  # the op gives up, as stream_open does after timeout_ms
        await ready.wait()
    assert streams.figures()["open"] == 1
    await trio.sleep(2)
    assert streams.figures()["open"] == 0
    assert [frame.error.code for frame in peers.of(StreamReset)] == ["timeout"]


async def test_credit_goes_back_even_when_the_postbox_is_full(served: ServedStreams) -> None:
    served.streams.postbox = Postbox(served.streams.wire, capacity=0)  # every post is dropped
    pipe = await accepted(served)
    piece = b"x" * (CREDIT_RETURN - STREAM_FRAME_COST)
    served.peers.deliver(StreamData(WIRE_ID, True, 1, piece))
    assert pipe.to_socket.receive_nowait() == piece
    await pipe.consumed.send(frame_cost(piece))  # the connection wrote it to its socket
    await trio.testing.wait_all_tasks_blocked()
    assert served.peers.of(StreamCredit) == [StreamCredit(WIRE_ID, False, CREDIT_RETURN)]


def leave(pipe: Pipe) -> None:
    """The program's connection closes, as its session's close closes the pipe."""
    pipe.from_socket.close()
    pipe.consumed.close()
    pipe.to_socket.close()


async def sent_by_program(served: ServedStreams, items: list[Item]) -> Pipe:
    """An accepted stream whose program sent `items` and closed its connection."""
    pipe = await accepted(served)
    for item in items:
        await pipe.from_socket.send(item)
    leave(pipe)
    await trio.testing.wait_all_tasks_blocked()
    return pipe


def credit_back(served: ServedStreams, granted: int) -> int:
    """The peer hands back the credit of every data frame sent beyond `granted` (the credit
    given back before); the credit given back now included."""
    spent = sum(frame_cost(frame.data) for frame in served.peers.of(StreamData))
    if spent > granted:
        served.peers.deliver(StreamCredit(WIRE_ID, True, spent - granted))
    return spent


async def test_what_a_program_sent_before_its_end_goes_out_after_it_left(
    served: ServedStreams,
) -> None:
    """More than the credit allows, then the end, then the connection closes: nothing is
    dropped; the data and the end go out as credit comes, and the peer's end finishes it."""
    data = bytes(range(256)) * (3 * MAX_STREAM_FRAME_BYTES // 256)
    size = MAX_STREAM_FRAME_BYTES
    pieces: list[Item] = [data[i : i + size] for i in range(0, len(data), size)]
    await sent_by_program(served, [*pieces, END])
    assert served.streams.figures()["streams"][0]["left"]
    granted = 0
    with trio.fail_after(WAIT):
        while not served.peers.of(StreamEnd):
            assert await resets(served) == []
            granted = credit_back(served, granted)
            await trio.testing.wait_all_tasks_blocked()
    assert b"".join(frame.data for frame in served.peers.of(StreamData)) == data
    served.peers.deliver(StreamEnd(WIRE_ID, True, 0))
    assert await resets(served) == []
    assert served.streams.figures()["open"] == 0
    assert served.streams.figures()["counters"]["finished"] == 1


async def test_a_program_that_left_before_its_end_resets_at_once(served: ServedStreams) -> None:
    """What it sent waits for credit, but no end follows it: the stream is reset now, not
    after the credit for all of it came."""
    await sent_by_program(served, [b"x" * MAX_STREAM_FRAME_BYTES] * 3)
    assert await resets(served) == ["cancelled"]
    assert served.streams.figures()["open"] == 0


async def test_data_for_a_program_that_left_cancels_the_peer_after_our_end(
    served: ServedStreams,
) -> None:
    """Once the program left, what the peer sends it is lost: the peer gets our end first,
    then the reset, and the same when what it sent before was never written."""
    await sent_by_program(served, [b"bye", END])
    assert served.peers.of(StreamEnd) == [StreamEnd(WIRE_ID, False, 1)]
    assert await resets(served) == []
    served.peers.deliver(StreamData(WIRE_ID, True, 1, b"late"))
    assert await resets(served) == ["cancelled"]
    served.peers.sent.clear()
    pipe = await accepted(served)
    served.peers.deliver(StreamData(WIRE_ID, True, 1, b"never written"))
    await pipe.from_socket.send(END)
    leave(pipe)
    assert await resets(served) == ["cancelled"]
    tags = [frame.tag for _, frame in served.peers.sent]
    assert tags.index(StreamEnd.tag) < tags.index(StreamReset.tag)


@attrs.define
class CreditLaneFullPeers(RecordingPeers):
    """A peer layer whose lane takes no stream_credit until `room` is set."""

    room: trio.Event = attrs.field(factory=trio.Event)

    async def send_app(self, device_id: str, frame: Frame) -> None:
        if isinstance(frame, StreamCredit):
            await self.room.wait()
        await super().send_app(device_id, frame)

    def send_app_nowait(self, device_id: str, frame: Frame) -> bool:
        if isinstance(frame, StreamCredit) and not self.room.is_set():
            return False
        return super().send_app_nowait(device_id, frame)


async def credit_stuck(
    nursery: trio.Nursery, *, wrote_all: bool
) -> tuple[ServedStreams, CreditLaneFullPeers, Pipe]:
    """A stream PEER opened, accepted, whose core's credit task is stuck sending the credit of
    the first data frame the connection wrote; a second one came too, written if `wrote_all`."""
    peers, owner = CreditLaneFullPeers([PEER]), RecordingConnection()
    streams = Streams("net", AppWire(peers, ME), run_now, lambda _m: owner)
    await nursery.start(streams.run)
    served = ServedStreams(streams, peers, owner)
    pipe = await accepted(served)
    first, second = b"x" * (CREDIT_RETURN - STREAM_FRAME_COST), b"y"
    peers.deliver(StreamData(WIRE_ID, True, 1, first))
    peers.deliver(StreamData(WIRE_ID, True, 2, second))
    for data in (first, second) if wrote_all else (first,):
        assert pipe.to_socket.receive_nowait() == data
        await pipe.consumed.send(frame_cost(data))  # the connection wrote it
        await trio.testing.wait_all_tasks_blocked()  # the first credit waits for room
    return served, peers, pipe


async def test_a_program_that_wrote_all_then_left_is_not_taken_for_one_that_lost_data(
    nursery: trio.Nursery,
) -> None:
    """The program wrote all that came, sent its end and left while core's credit task was
    still stuck sending a credit: what it wrote still counts once that task reads it, so the
    peer finishes rather than being cancelled."""
    served, peers, pipe = await credit_stuck(nursery, wrote_all=True)
    await pipe.from_socket.send(END)
    leave(pipe)
    await trio.testing.wait_all_tasks_blocked()
    peers.room.set()
    assert await resets(served) == []
    assert served.peers.of(StreamEnd) == [StreamEnd(WIRE_ID, False, 0)]
    peers.deliver(StreamEnd(WIRE_ID, True, 2))
    assert served.streams.figures()["counters"]["finished"] == 1


@pytest.mark.parametrize("wrote_all", [True, False])
@pytest.mark.parametrize("peer_ends", ["before", "after"])
async def test_whether_a_left_program_lost_data_is_told_once_the_credit_task_knows(
    nursery: trio.Nursery, peer_ends: str, wrote_all: bool
) -> None:
    """The program sent its end and left while core's credit task was stuck sending a credit,
    and the peer's end came before or after it left: the stream neither finishes nor is
    cancelled until that task took all the connection wrote; then it finishes if the
    connection wrote all that came, else the peer is cancelled."""
    served, peers, pipe = await credit_stuck(nursery, wrote_all=wrote_all)
    if peer_ends == "before":
        peers.deliver(StreamEnd(WIRE_ID, True, 2))
    pipe.from_socket.send_nowait(END)  # and it leaves before core reads that end
    leave(pipe)
    await trio.testing.wait_all_tasks_blocked()
    assert served.peers.of(StreamEnd) == [StreamEnd(WIRE_ID, False, 0)]
    if peer_ends == "after":
        peers.deliver(StreamEnd(WIRE_ID, True, 2))
    assert await resets(served) == []
    assert served.streams.figures()["open"] == 1  # not decided yet
    peers.room.set()
    assert await resets(served) == ([] if wrote_all else ["cancelled"])
    assert served.streams.figures()["counters"].get("finished", 0) == int(wrote_all)
    assert served.streams.figures()["open"] == 0


async def test_a_program_that_left_goes_after_the_streams_timeout(
    served: ServedStreams, autojump_clock: trio.testing.MockClock
) -> None:
    """The peer takes nothing more (no credit, no end): the stream is reset once the
    stream_open's timeout_ms (30 s here) passed since the program left, not held for ever."""
    await sent_by_program(served, [b"x" * MAX_STREAM_FRAME_BYTES] * 3 + [END])
    await trio.sleep(29)
    assert served.streams.figures()["open"] == 1
    await trio.sleep(2)
    assert await resets(served) == ["cancelled"]
    assert served.streams.figures()["open"] == 0


async def test_credit_that_comes_while_a_left_programs_rest_is_read_is_used(
    served: ServedStreams,
) -> None:
    """The sender reads what a program that left still sent, yielding at each item; credit
    that arrives meanwhile wakes it, so the stream does not sit with a full window until the
    sweep cancels it."""
    pipe = await accepted(served)
    for item in [b"x" * MAX_STREAM_FRAME_BYTES] * 3 + [b"s"] * 4 + [END]:
        await pipe.from_socket.send(item)
    await trio.testing.wait_all_tasks_blocked()  # the sender waits for credit, the rest queued
    (state,) = list(served.streams.table)
    assert state.core is not None
    queued = state.core.from_socket

    async def credit_while_read() -> None:
        with trio.fail_after(WAIT):
            while not (state.unsent and queued.statistics().current_buffer_used):
                await trio.lowlevel.checkpoint()  # the sender has read some, not all
        credit_back(served, 0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(credit_while_read)
        leave(pipe)
    await trio.testing.wait_all_tasks_blocked()
    sent = sum(len(frame.data) for frame in served.peers.of(StreamData))
    assert sent > 2 * MAX_STREAM_FRAME_BYTES
    assert await resets(served) == []
