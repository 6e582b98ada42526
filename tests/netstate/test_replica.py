"""One network's state replica in-process, on a real store, its peers a recording stand-in
at the wire: what it keeps, announces and sends when writes race."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.clock import wall_ms
from meshactors.netstate.frames import StatePut, WireEntry
from meshactors.netstate.replica import WORK_BATCH, StateReplica
from meshactors.netstate.writers import open_network_writers
from meshactors.network.app_wire import AppWire
from meshactors.store.actor import StoreActor
from meshactors.wire.device_id import device_id_from_public_key
from tests.network.peerstandin import RecordingPeers

NET = "net"
WAIT = 10.0  # seconds any awaited condition may take before the test fails


def _device() -> str:
    return device_id_from_public_key(bytes(SigningKey.generate().verify_key))


ME, PEER = _device(), _device()


@attrs.define
class Announced:
    """The events the replica published, in order."""

    events: list[dict[str, Any]] = attrs.field(factory=list)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append({"kind": kind} | data)


@contextlib.asynccontextmanager
async def running_replica(
    tmp_path: Path,
) -> AsyncIterator[tuple[StateReplica, RecordingPeers, Announced]]:
    """NET's replica on a store in tmp_path, running until the block ends."""
    store = StoreActor(tmp_path / "state.db")
    peers, announced = RecordingPeers([PEER]), Announced()
    wire = AppWire(peers, ME)
    replica = StateReplica(NET, wire, store, announced, open_network_writers(ME, wire.active_peers))
    tree = Supervisor(children=[ChildSpec("store", store)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        await nursery.start(replica.run)
        await trio.testing.wait_all_tasks_blocked()  # the sweep queued at start is done
        yield replica, peers, announced
        nursery.cancel_scope.cancel()


async def test_a_write_of_ours_beaten_before_its_turn_is_answered_not_announced_or_sent(
    tmp_path: Path,
) -> None:
    async with running_replica(tmp_path) as (replica, peers, announced):
        put = peers.handlers[StatePut.tag]
        ahead = wall_ms() + 60_000  # the peer's clock is a minute ahead of ours
        for n in range(WORK_BATCH - 1):  # a full batch of its puts, the last one to "k"
            put(PEER, StatePut([WireEntry(f"p{n}", n, False, ahead, 0, PEER)]))
        put(PEER, StatePut([WireEntry("k", "theirs", False, ahead, 0, PEER)]))
        # Stamped now, before the state task has merged the peer's write to "k": behind it.
        done = replica.write("k", "mine", deleted=False)
        with trio.fail_after(WAIT):
            answer = await done.wait()
        await trio.testing.wait_all_tasks_blocked()  # the rest of the batch is done
        assert (answer["value"], answer["by"]) == ("mine", ME)  # the op hears its write
        assert replica.get("k")["value"] == "theirs"
        assert [event["value"] for event in announced.events if event["key"] == "k"] == ["theirs"]
        assert [frame for _, frame in peers.sent if isinstance(frame, StatePut)] == []
        assert replica.counters["lost"] == 1


async def test_a_write_of_ours_beaten_in_its_own_batch_is_answered_not_announced_or_sent(
    tmp_path: Path,
) -> None:
    async with running_replica(tmp_path) as (replica, peers, announced):
        ahead = wall_ms() + 60_000  # the peer's clock is a minute ahead of ours
        # Ours first, theirs after, both queued before the state task looks: one batch.
        put = peers.handlers[StatePut.tag]
        done = replica.write("k", "mine", deleted=False)
        put(PEER, StatePut([WireEntry("k", "theirs", False, ahead, 0, PEER)]))
        with trio.fail_after(WAIT):
            answer = await done.wait()  # (answered before the batch's save: it lost)
            await _batch_done(replica)
        assert (answer["value"], answer["by"]) == ("mine", ME)  # the op hears its write
        assert replica.get("k")["value"] == "theirs"
        assert [event["value"] for event in announced.events if event["key"] == "k"] == ["theirs"]
        assert _put_values(peers, "k") == []
        assert replica.counters["lost"] == 1


async def test_a_write_of_ours_beating_an_older_one_in_its_batch_is_kept_and_sent(
    tmp_path: Path,
) -> None:
    async with running_replica(tmp_path) as (replica, peers, announced):
        behind = wall_ms() - 60_000  # the peer's clock is a minute behind ours
        put = peers.handlers[StatePut.tag]
        put(PEER, StatePut([WireEntry("k", "theirs", False, behind, 0, PEER)]))
        done = replica.write("k", "mine", deleted=False)
        with trio.fail_after(WAIT):
            await done.wait()
            await _batch_done(replica)
        assert replica.get("k")["value"] == "mine"
        # each in the order it changed the map: theirs, then ours over it
        assert [event["value"] for event in announced.events if event["key"] == "k"] == [
            "theirs",
            "mine",
        ]
        assert _put_values(peers, "k") == ["mine"]
        assert replica.counters["lost"] == 0


async def _batch_done(replica: StateReplica) -> None:
    """Wait until the batch being worked is done: a write queued now goes in a later one,
    answered only after its save, so after everything the earlier batch saved and sent."""
    await replica.write("later", True, deleted=False).wait()


def _put_values(peers: RecordingPeers, key: str) -> list[Any]:
    """The values of `key` the replica sent its peer in puts, in order."""
    return [
        entry.value
        for _, frame in peers.sent
        if isinstance(frame, StatePut)
        for entry in frame.entries
        if entry.key == key
    ]
