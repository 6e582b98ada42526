"""Core's rpc part alone, on a recording peer layer: stream credit, lag, deadlines (MockClock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.network.app_frames import RpcCall, RpcCancel, RpcChunk, RpcCredit, RpcEnd
from meshactors.network.app_wire import AppWire
from meshactors.network.payload import Payload
from meshactors.network.rpc import STREAM_WINDOW, Rpc
from meshactors.wire.ipc import ErrorCode, OpError
from tests.network.peerstandin import RecordingPeers

PEER = "peer-device"
ME = "own-device"


@attrs.define
class RecordingConnection:
    """A local connection whose push queue holds `room` more events (and any reserved one)."""

    client_id: str = "c1"
    room: int = 1_000_000
    gone: bool = False
    pushed: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def push(self, kind: str, data: dict[str, Any], *, reserved: bool = False) -> bool:
        if self.room <= 0 and not reserved:
            return False
        self.room -= 1
        self.pushed.append((kind, data))
        return True


def run_now(fn: Callable[[], None]) -> bool:
    """Rpc's `tell`, where the test's task plays core: run at once."""
    fn()
    return True


@pytest.fixture
async def running(nursery: trio.Nursery) -> AsyncIterator[tuple[Rpc, RecordingPeers]]:
    peers = RecordingPeers([PEER])
    rpc = Rpc("net", AppWire(peers, ME), run_now)
    await nursery.start(rpc.run)
    yield rpc, peers


async def test_a_stream_producer_waits_when_the_caller_gives_no_credit(
    running: tuple[Rpc, RecordingPeers], nursery: trio.Nursery
) -> None:
    rpc, peers = running
    server = RecordingConnection()
    rpc.register(server, "count", streaming=True)
    peers.deliver(RpcCall("r1", "count", None, False, True, 60_000))
    ((kind, inbound),) = server.pushed
    assert kind == "rpc_inbound"
    for n in range(STREAM_WINDOW):
        await rpc.queue_chunk(server, inbound["request_id"], Payload(n))
    finished = trio.Event()

    async def one_more() -> None:
        await rpc.queue_chunk(server, inbound["request_id"], Payload("more"))
        finished.set()

    nursery.start_soon(one_more)
    await trio.testing.wait_all_tasks_blocked()
    assert not finished.is_set()
    assert len(peers.of(RpcChunk)) == STREAM_WINDOW
    peers.deliver(RpcCredit("r1", 1))
    with trio.fail_after(1):
        await finished.wait()
    assert len(peers.of(RpcChunk)) == STREAM_WINDOW + 1


def serving_a_stream(rpc: Rpc, peers: RecordingPeers) -> tuple[RecordingConnection, str]:
    """A connection serving `count`, and the id of the streamed call "r1" it was given."""
    server = RecordingConnection()
    rpc.register(server, "count", streaming=True)
    peers.deliver(RpcCall("r1", "count", None, False, True, 60_000))
    return server, str(server.pushed[0][1]["request_id"])


async def test_chunks_and_the_end_leave_in_order_and_nothing_follows_the_end(
    running: tuple[Rpc, RecordingPeers],
) -> None:
    rpc, peers = running
    server, request_id = serving_a_stream(rpc, peers)
    sent = [rpc.queue_chunk(server, request_id, Payload(n)) for n in range(3)]
    sent.append(rpc.queue_end(server, request_id, None))
    with pytest.raises(OpError) as late:
        rpc.queue_chunk(server, request_id, Payload("after the end"))
    assert late.value.code is ErrorCode.UNKNOWN_REQUEST
    with trio.fail_after(1):
        for each in sent:
            assert await each == {}
    assert [chunk.payload for chunk in peers.of(RpcChunk)] == [0, 1, 2]
    assert len(peers.of(RpcEnd)) == 1
    assert not rpc.has_inbound(request_id)


async def test_chunks_queued_when_the_caller_cancels_fail_as_cancelled(
    running: tuple[Rpc, RecordingPeers],
) -> None:
    rpc, peers = running
    server, request_id = serving_a_stream(rpc, peers)
    waiting = [rpc.queue_chunk(server, request_id, Payload(n)) for n in range(STREAM_WINDOW + 2)]
    await trio.testing.wait_all_tasks_blocked()  # the window went; two wait for credit
    peers.deliver(RpcCancel("r1", "cancelled"))
    with trio.fail_after(1):
        for stuck in waiting[STREAM_WINDOW:]:
            with pytest.raises(OpError) as failure:
                await stuck
            assert failure.value.code is ErrorCode.CANCELLED
    assert len(peers.of(RpcChunk)) == STREAM_WINDOW


async def test_the_caller_grants_credit_as_its_connection_takes_chunks(
    running: tuple[Rpc, RecordingPeers],
) -> None:
    rpc, peers = running
    caller = RecordingConnection()
    request_id = await rpc.call_stream(caller, PEER, "count", Payload(), 60_000)
    (call,) = peers.of(RpcCall)
    for n in range(STREAM_WINDOW):
        peers.deliver(RpcChunk(call.id, n))
    await trio.testing.wait_all_tasks_blocked()
    assert sum(credit.n for credit in peers.of(RpcCredit)) == STREAM_WINDOW
    assert [data["payload"] for _, data in caller.pushed] == list(range(STREAM_WINDOW))
    peers.deliver(RpcEnd(call.id))
    assert caller.pushed[-1] == (
        "rpc_call_stream_end",
        {"network": "net", "request_id": request_id},
    )


async def test_a_caller_that_falls_behind_ends_the_stream_as_lagged(
    running: tuple[Rpc, RecordingPeers],
) -> None:
    rpc, peers = running
    caller = RecordingConnection(room=2)
    await rpc.call_stream(caller, PEER, "count", Payload(), 60_000)
    (call,) = peers.of(RpcCall)
    for n in range(3):
        peers.deliver(RpcChunk(call.id, n))
    caller.room = 1
    peers.deliver(RpcChunk(call.id, 3))  # already ended: dropped as a stray
    await trio.testing.wait_all_tasks_blocked()
    assert [c.reason for c in peers.of(RpcCancel)] == ["lagged"]
    # the end finds no room either, but is never skipped: the caller waits on it
    kinds = [kind for kind, _ in caller.pushed]
    assert kinds == ["rpc_call_stream_chunk", "rpc_call_stream_chunk", "rpc_call_stream_end"]
    assert caller.pushed[-1][1]["error"]["code"] == "lagged"


async def test_a_stream_ends_with_timeout_at_its_deadline(
    running: tuple[Rpc, RecordingPeers], autojump_clock: trio.testing.MockClock
) -> None:
    rpc, peers = running
    caller = RecordingConnection()
    request_id = await rpc.call_stream(caller, PEER, "count", Payload(), 2_000)
    await trio.sleep(1.9)
    assert caller.pushed == []
    await trio.sleep(0.2)
    (end,) = [data for kind, data in caller.pushed if kind == "rpc_call_stream_end"]
    assert end["request_id"] == request_id
    assert end["error"]["code"] == "timeout"
    assert [c.reason for c in peers.of(RpcCancel)] == ["timeout"]


async def test_a_served_call_is_forgotten_after_the_callers_deadline(
    running: tuple[Rpc, RecordingPeers], autojump_clock: trio.testing.MockClock
) -> None:
    rpc, peers = running
    server = RecordingConnection()
    rpc.register(server, "slow", streaming=False)
    peers.deliver(RpcCall("r1", "slow", None, False, False, 1_000))
    request_id = server.pushed[0][1]["request_id"]
    await trio.sleep(10)
    assert not rpc.has_inbound(request_id)
    assert server.pushed[-1] == (
        "rpc_cancelled",
        {"network": "net", "request_id": request_id, "reason": "timeout"},
    )


async def test_a_single_call_times_out_at_its_deadline(
    running: tuple[Rpc, RecordingPeers], autojump_clock: trio.testing.MockClock
) -> None:
    rpc, peers = running
    began = trio.current_time()
    with pytest.raises(OpError) as failure:
        await rpc.call(RecordingConnection(), PEER, "slow", Payload(), 2_000)
    assert failure.value.code is ErrorCode.TIMEOUT
    assert trio.current_time() - began == pytest.approx(2.0)
    await trio.testing.wait_all_tasks_blocked()
    assert [c.reason for c in peers.of(RpcCancel)] == ["timeout"]
    assert not rpc.has_outbound(peers.of(RpcCall)[0].id)
