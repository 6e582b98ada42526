"""One network's state replica in-process, on a real store, its peers a recording stand-in
at the wire: what it keeps, announces and sends when writes race."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.clock import wall_ms
from meshactors.netstate import replica as replica_module
from meshactors.netstate import statemap
from meshactors.netstate.entry import BUCKETS, Entry
from meshactors.netstate.frames import (
    MAX_PAGE_BYTES,
    MAX_PAGE_ENTRIES,
    MAX_PULL_ID,
    StatePage,
    StatePull,
    StatePut,
    StateSummary,
    WireEntry,
)
from meshactors.netstate.hlc import MAX_COUNTER, MAX_WALL_MS, Stamp
from meshactors.netstate.replica import (
    MAX_AHEAD_MS,
    PAGE_COST,
    PRUNE_INTERVAL,
    PULL_PACE_BURST,
    PULL_PACE_BYTES,
    STATE_INBOX,
    WORK_BATCH,
    StateReplica,
)
from meshactors.netstate.statemap import StateMap
from meshactors.netstate.store import save_state
from meshactors.netstate.writers import open_network_writers
from meshactors.network.app_wire import AppWire
from meshactors.network.peers import PeerStatus
from meshactors.store.actor import StoreActor
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.ipc import ErrorCode, OpError
from tests.network.peerstandin import RecordingPeers

NET = "net"
HOUR_MS = 3_600_000
WAIT = 10.0  # seconds any awaited condition may take before the test fails


def _device() -> str:
    return device_id_from_public_key(bytes(SigningKey.generate().verify_key))


ME, PEER, OTHER_PEER = _device(), _device(), _device()


@attrs.define
class Announced:
    """The events the replica published, in order."""

    events: list[dict[str, Any]] = attrs.field(factory=list)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append({"kind": kind} | data)


@contextlib.asynccontextmanager
async def running_replica(
    tmp_path: Path, saved: Sequence[Entry] = ()
) -> AsyncIterator[tuple[StateReplica, RecordingPeers, Announced]]:
    """NET's replica on a store in tmp_path (holding `saved` before it starts), running until
    the block ends."""
    store = StoreActor(tmp_path / "state.db")
    peers, announced = RecordingPeers([PEER]), Announced()
    wire = AppWire(peers, ME)
    replica = StateReplica(NET, wire, store, announced, open_network_writers(ME, wire.active_peers))
    tree = Supervisor(children=[ChildSpec("store", store)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        await store.call(functools.partial(save_state, network=NET, entries=saved), what="save")
        await nursery.start(replica.run)
        await trio.testing.wait_all_tasks_blocked()  # the sweep queued at start is done
        yield replica, peers, announced
        nursery.cancel_scope.cancel()


async def test_a_write_of_ours_queued_behind_a_peers_newer_write_is_stamped_after_it(
    tmp_path: Path,
) -> None:
    """A write is stamped when the state task puts it in the map: after every stamp it merged
    before, here a peer's write to the key queued ahead of ours, stamped a minute ahead."""
    async with running_replica(tmp_path) as (replica, peers, announced):
        put = peers.handlers[StatePut.tag]
        ahead = wall_ms() + 60_000  # the peer's clock is a minute ahead of ours
        for n in range(WORK_BATCH - 1):  # a full batch of its puts, the last one to "k"
            put(PEER, StatePut([WireEntry(f"p{n}", n, False, ahead, 0, PEER)]))
        put(PEER, StatePut([WireEntry("k", "theirs", False, ahead, 0, PEER)]))
        done = replica.write("k", "mine", deleted=False)  # queued before theirs is merged
        with trio.fail_after(WAIT):
            answer = await done.wait()
            await _batch_done(replica)
        _assert_kept_after(replica, peers, announced, answer, Stamp(ahead, 0))


async def test_a_write_of_ours_in_a_batch_with_a_peers_newer_write_is_stamped_after_it(
    tmp_path: Path,
) -> None:
    """Ours queued first and a peer's write to the key stamped a minute ahead after it, both
    worked in one batch: ours is stamped after the peer's, so the op's answer is what the map
    holds, tells and sends."""
    async with running_replica(tmp_path) as (replica, peers, announced):
        ahead = wall_ms() + 60_000  # the peer's clock is a minute ahead of ours
        put = peers.handlers[StatePut.tag]
        done = replica.write("k", "mine", deleted=False)
        put(PEER, StatePut([WireEntry("k", "theirs", False, ahead, 0, PEER)]))
        with trio.fail_after(WAIT):
            answer = await done.wait()
            await _batch_done(replica)
        _assert_kept_after(replica, peers, announced, answer, Stamp(ahead, 0))


def _assert_kept_after(
    replica: StateReplica,
    peers: RecordingPeers,
    announced: Announced,
    answer: dict[str, Any],
    theirs: Stamp,
) -> None:
    """Our write to "k", answered `answer`, is stamped after the peer's (`theirs`) and is what
    the map holds, told after the peer's and sent."""
    wall, counter = map(int, answer["version"].split("."))
    assert Stamp(wall, counter) > theirs
    assert (answer["value"], answer["by"]) == ("mine", ME)
    assert replica.get("k") == answer
    assert [event["value"] for event in announced.events if event["key"] == "k"] == [
        "theirs",
        "mine",
    ]
    assert _put_values(peers, "k") == ["mine"]


async def test_a_write_refused_by_a_clock_at_the_end_of_its_range_is_a_conflict(
    tmp_path: Path,
) -> None:
    """A stamp saved before stamps were checked can leave the clock no stamp to give: our
    write is refused `conflict` and changes nothing."""
    last = Entry.write("k", "old", Stamp(MAX_WALL_MS - 1, MAX_COUNTER - 1), PEER)
    async with running_replica(tmp_path, [last]) as (replica, peers, announced):
        with pytest.raises(OpError) as refused, trio.fail_after(WAIT):
            await replica.write("k", "mine", deleted=False).wait()
        assert refused.value.code is ErrorCode.CONFLICT
        assert replica.map.get("k") == last
        assert (announced.events, _put_values(peers, "k")) == ([], [])


async def test_a_clock_started_from_a_saved_stamp_far_ahead_refuses_our_writes(
    tmp_path: Path,
) -> None:
    """A row saved while this machine's clock ran 48 h ahead: the clock starts from it, so
    every write of ours would be stamped ahead of what peers take; the start warns and
    counts it, and a write is refused `conflict` saying how far ahead, changing nothing."""
    ahead = Entry.write("skew", "from the future", Stamp(wall_ms() + 48 * HOUR_MS, 0), ME)
    with structlog.testing.capture_logs() as logs:
        async with running_replica(tmp_path, [ahead]) as (replica, peers, announced):
            with pytest.raises(OpError) as refused, trio.fail_after(WAIT):
                await replica.write("later", "mine", deleted=False).wait()
            assert replica.counters["loaded_ahead"] == 1
            assert replica.map.get("later") is None
            assert (announced.events, peers.of(StatePut)) == ([], [])
    assert refused.value.code is ErrorCode.CONFLICT
    assert "state clock is 48.0 h ahead of this machine's clock" in refused.value.message
    assert "taken again in 24.0 h" in refused.value.message
    (warned,) = [entry for entry in logs if entry["log_level"] == "warning"]
    assert (warned["network"], warned["entries"]) == (NET, 1)
    (tmp_path / "within").mkdir()
    within = Entry.write("skew", "ahead", Stamp(wall_ms() + 23 * HOUR_MS, 0), ME)
    async with running_replica(tmp_path / "within", [within]) as (replica, peers, _):
        with trio.fail_after(WAIT):  # 23 h ahead: peers take it, and so ours after it
            answer = await replica.write("later", "mine", deleted=False).wait()
        assert answer["version"] > within.version
        assert replica.counters["loaded_ahead"] == 0


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


async def test_a_catch_up_that_changed_nothing_is_not_pulled_again_until_a_map_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past twice the limits (three members writing at once), what each member keeps depends
    on the order writes came in: the maps differ for good, and a member stops pulling a peer
    whose entries it cannot take, until either map changes."""
    monkeypatch.setattr(statemap, "MAX_KEYS", 2)  # peers' writes may take the map to 4 keys
    theirs = StateMap()
    for n in range(6):
        theirs.merge(Entry.write(f"t{n}", n, Stamp(1000, 0), PEER))
    async with running_replica(tmp_path) as (replica, peers, _):
        assert await _catch_up(peers, theirs)  # takes 4 keys of 6
        assert (len(replica.map), replica.dropped["over_limit"]) == (4, 2)
        assert await _catch_up(peers, theirs)  # changes nothing: the last one needed
        assert (len(replica.map), replica.dropped["over_limit"]) == (4, 4)
        for _ in range(3):
            assert not await _catch_up(peers, theirs)
        assert replica.counters["pulls_skipped"] == 3
        theirs.merge(Entry.tombstone("t0", Stamp(wall_ms(), 0), PEER))  # their map changes
        assert await _catch_up(peers, theirs)
        assert replica.get("t1")["value"] == 1
        assert replica.map.get("t0") == theirs.get("t0")


async def test_a_catch_up_whose_entries_were_refused_for_now_is_pulled_again(
    tmp_path: Path,
) -> None:
    """Entries refused for a reason that may go away (here stamped too far ahead of our
    clock, which catches up) leave the map as it was, yet the next summary pulls again."""
    theirs = StateMap()
    ahead = wall_ms() + MAX_AHEAD_MS + 3_600_000  # an hour past what we take
    theirs.merge(Entry.write("k", 1, Stamp(ahead, 0), PEER))
    async with running_replica(tmp_path) as (replica, peers, _):
        for n in range(1, 4):
            assert await _catch_up(peers, theirs)
            assert (len(replica.map), replica.dropped["future_stamp"]) == (0, n)
        assert replica.counters["pulls_skipped"] == 0


unasked_pages = st.lists(
    st.tuples(
        st.sampled_from([PEER, OTHER_PEER]),  # the sender: the one pulled from, or another
        st.integers(0, MAX_PULL_ID - 1),  # the pull id
        st.sampled_from([ME, PEER, OTHER_PEER]),  # whom its entry credits
        st.booleans(),  # more
    ),
    min_size=1,
    max_size=8,
)


@given(unasked_pages)
@settings(max_examples=25, deadline=None)
def test_generated_pages_of_no_pull_open_with_their_sender_merge_nothing(
    pages: list[tuple[str, int, str, bool]],
) -> None:
    """Pages whose sender and pull id are not those of the pull open (with PEER) are dropped
    whole and counted `stale_page`, whoever their entries credit; then the page that answers
    it is merged."""
    trio.run(_unasked_pages_merge_nothing, pages)


async def _unasked_pages_merge_nothing(pages: list[tuple[str, int, str, bool]]) -> None:
    theirs = StateMap()
    theirs.merge(Entry.write("asked", 1, Stamp(wall_ms(), 0), PEER))
    page = StatePage.tag
    with tempfile.TemporaryDirectory() as home:
        async with running_replica(Path(home)) as (replica, peers, announced):
            peers.active.append(OTHER_PEER)
            peers.handlers[StateSummary.tag](PEER, StateSummary(theirs.summary()))
            with trio.fail_after(WAIT):
                await peers.wait_sent(StatePull, 1)
            (opened,) = peers.of(StatePull)
            for n, (sender, pull, by, more) in enumerate(pages):
                if (sender, pull) == (PEER, opened.pull):  # that one is asked: another id
                    pull = (pull + 1) % MAX_PULL_ID
                forged = WireEntry(f"forged{n}", n, False, wall_ms(), 0, by)
                peers.handlers[page](sender, StatePage(pull, [forged], more))
            found, _ = theirs.page(opened.buckets, None, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
            asked = StatePage(opened.pull, [WireEntry.of(entry) for entry in found], False)
            peers.handlers[page](PEER, asked)
            with trio.fail_after(WAIT):
                await _worked(peers)
            live, _ = replica.map.live("", None, 10, MAX_PAGE_BYTES)
            assert [entry.key for entry in live] == ["asked"]
            assert [event["key"] for event in announced.events] == ["asked"]
            assert replica.dropped["stale_page"] == len(pages)
            assert replica.figures()["pulls"] == 0  # the asked page ended the catch-up


async def test_a_peer_repeating_pulls_is_answered_at_its_pace_and_the_rest_dropped(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A pull costs the peer a few bytes and us a page: pulls past the pace wait, the latest
    one per peer, and the others are dropped and counted; answers resume as time passes."""
    mock_clock.autojump_threshold = WAIT  # time stands still, unless the test hangs
    everything = list(range(BUCKETS))
    async with running_replica(tmp_path) as (replica, peers, _):
        await _fill(replica, 9)  # more than one page
        found, _ = replica.map.page(everything, None, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
        cost = PAGE_COST + sum(entry.wire_size for entry in found)
        answered = -(-PULL_PACE_BURST // cost)  # the burst, the last page going into debt
        sent = answered + 10
        for n in range(sent):  # the same pull over and over, all at once
            peers.handlers[StatePull.tag](PEER, StatePull(n, everything))
        await trio.testing.wait_all_tasks_blocked()
        assert len(peers.of(StatePage)) == answered
        assert replica.dropped["pull_paced"] == sent - answered - 1
        assert replica.figures()["pulls_held"] == 1
        mock_clock.jump(cost / PULL_PACE_BYTES)  # the debt paid: the one held is answered
        await trio.testing.wait_all_tasks_blocked()
        assert [page.pull for page in peers.of(StatePage)[answered:]] == [sent - 1]
        peers.handlers[StatePull.tag](PEER, StatePull(sent, everything))
        await trio.testing.wait_all_tasks_blocked()
        assert len(peers.of(StatePage)) == answered + 1  # held: the last page's debt
        mock_clock.jump(cost / PULL_PACE_BYTES)
        await trio.testing.wait_all_tasks_blocked()
        assert [page.pull for page in peers.of(StatePage)[answered:]] == [sent - 1, sent]
        assert replica.dropped["pull_paced"] == sent - answered - 1  # no more dropped
        assert replica.figures()["pulls_held"] == 0


async def test_a_catch_up_past_the_pull_burst_is_slowed_to_the_pace_and_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """A catch-up has one pull in flight: past the burst its pulls wait for the pace, and
    none is dropped."""
    monkeypatch.setattr(replica_module, "PULL_PACE_BURST", 2 * MAX_PAGE_BYTES)
    mock_clock.autojump_threshold = WAIT  # time stands still while the store saves...
    async with running_replica(tmp_path) as (replica, peers, _):
        await _fill(replica, 40)  # some 5 pages
        mock_clock.autojump_threshold = 0  # ...then jumps to each held pull's release
        start, keys, after, more = trio.current_time(), [], None, True
        with trio.fail_after(WAIT):
            while more:
                served = len(peers.of(StatePage))
                peers.handlers[StatePull.tag](PEER, StatePull(7, list(range(BUCKETS)), after))
                await peers.wait_sent(StatePage, served + 1)
                page = peers.of(StatePage)[-1]
                keys += [entry.key for entry in page.entries]
                after, more = keys[-1], page.more
        assert keys == sorted(f"k{n:02}" for n in range(40))
        assert replica.dropped["pull_paced"] == 0
        assert trio.current_time() > start  # (paced: the mock clock moved)


async def test_a_peer_back_inside_its_wait_has_its_pull_answered_once_at_its_pace(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A peer that leaves while a pull of its waits for the pace, and comes back to pull
    again inside that wait, is answered once, when the pace allows; the replica keeps one
    wake-up per held pull at most (no timer of the pull it left behind runs on)."""
    mock_clock.autojump_threshold = WAIT  # time stands still, unless the test hangs
    everything = list(range(BUCKETS))
    async with running_replica(tmp_path) as (replica, peers, _):
        await _fill(replica, 9)  # more than one page
        found, _ = replica.map.page(everything, None, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
        cost = PAGE_COST + sum(entry.wire_size for entry in found)
        answered = -(-PULL_PACE_BURST // cost)  # the burst, the last page going into debt
        idle = _tasks()
        for n in range(answered + 1):  # the last one waits
            peers.handlers[StatePull.tag](PEER, StatePull(n, everything))
        await trio.testing.wait_all_tasks_blocked()
        assert (len(peers.of(StatePage)), replica.figures()["pulls_held"]) == (answered, 1)
        mock_clock.jump(cost / PULL_PACE_BYTES / 2)  # half the wait
        peers.active = []
        replica.on_peer_status(PEER, PeerStatus.OFFLINE)
        await trio.testing.wait_all_tasks_blocked()
        assert replica.figures()["pulls_held"] == 0  # what it left waiting is forgotten
        peers.active = [PEER]
        replica.on_peer_status(PEER, PeerStatus.ACTIVE)
        peers.handlers[StatePull.tag](PEER, StatePull(answered + 1, everything))
        await trio.testing.wait_all_tasks_blocked()
        assert (len(peers.of(StatePage)), replica.figures()["pulls_held"]) == (answered, 1)
        assert _tasks() <= idle + 1  # a wake-up per held pull at most
        mock_clock.jump(cost / PULL_PACE_BYTES / 2)  # the pace it kept allows the pull now
        await trio.testing.wait_all_tasks_blocked()
        assert [page.pull for page in peers.of(StatePage)[answered:]] == [answered + 1]
        assert replica.figures()["pulls_held"] == 0
        assert replica.dropped["pull_paced"] == 0
        assert _tasks() == idle


async def test_a_leave_notice_a_full_queue_dropped_is_made_good_at_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """What the part keeps for a peer (here its pull held for the pace) outlives a leave
    notice that a full queue dropped only until the hourly sweep."""
    monkeypatch.setattr(replica_module, "PULL_PACE_BYTES", 1)  # after one page, the next...
    monkeypatch.setattr(replica_module, "PULL_PACE_BURST", 1)  # ...waits PAGE_COST s: hours
    mock_clock.autojump_threshold = WAIT  # time stands still, unless the test hangs
    async with running_replica(tmp_path) as (replica, peers, _):
        for n in range(STATE_INBOX + 1):  # one taken at once, the queue full of the rest...
            peers.handlers[StatePull.tag](PEER, StatePull(n, [0]))
        peers.active = []
        replica.on_peer_status(PEER, PeerStatus.OFFLINE)  # ...so the notice is dropped
        await trio.testing.wait_all_tasks_blocked()
        assert replica.dropped_in_core["queue_full"] == 1
        assert (len(peers.of(StatePage)), replica.figures()["pulls_held"]) == (1, 1)
        mock_clock.jump(PRUNE_INTERVAL)
        await trio.testing.wait_all_tasks_blocked()
        assert replica.figures()["pulls_held"] == 0
        assert len(peers.of(StatePage)) == 1


async def test_peers_whose_frames_a_full_queue_dropped_are_each_asked_for_a_summary_once(
    tmp_path: Path,
) -> None:
    """Frames a full queue drops bring each sender one summary asking for its own once the
    state task has worked on (summaries both ways), and again for a later drop; a write of
    ours meanwhile is refused `unavailable`."""
    async with running_replica(tmp_path) as (replica, peers, _):
        peers.active.append(OTHER_PEER)
        stale = StatePage(1, [], more=False)  # a page of no pull: worked, changes nothing
        page = peers.handlers[StatePage.tag]
        for _ in range(STATE_INBOX + 1):  # one taken at once, the queue full of the rest
            page(PEER, stale)
        for sender in (PEER, PEER, OTHER_PEER, PEER, OTHER_PEER):
            page(sender, stale)  # dropped
        with pytest.raises(OpError) as busy:
            replica.write("k", 1, deleted=False)
        assert busy.value.code is ErrorCode.UNAVAILABLE
        await trio.testing.wait_all_tasks_blocked()
        assert _asked(peers) == [PEER, OTHER_PEER]
        for _ in range(STATE_INBOX + 1):
            page(OTHER_PEER, stale)
        page(PEER, stale)  # dropped again: told again
        await trio.testing.wait_all_tasks_blocked()
        assert _asked(peers) == [PEER, OTHER_PEER, PEER]
        assert replica.figures()["dropped"] == {"queue_full": 6, "stale_page": 2 * STATE_INBOX + 2}


def _asked(peers: RecordingPeers) -> list[str]:
    """The peers sent a summary that asks for theirs, in order."""
    return [to for to, frame in peers.sent if isinstance(frame, StateSummary) and frame.ask]


def _tasks() -> int:
    """The tasks running in this test's trio run."""
    count, nurseries = 0, list(trio.lowlevel.current_root_task().child_nurseries)
    while nurseries:
        tasks = nurseries.pop().child_tasks
        count += len(tasks)
        nurseries += [nursery for task in tasks for nursery in task.child_nurseries]
    return count


async def _fill(replica: StateReplica, count: int) -> None:
    """Write `count` keys of 15 KB each (eight fill a page)."""
    with trio.fail_after(WAIT):
        for n in range(count):
            await replica.write(f"k{n:02}", "x" * 15_000, deleted=False).wait()


async def _catch_up(peers: RecordingPeers, theirs: StateMap) -> bool:
    """Send the replica `theirs`'s summary and serve the pages it pulls; whether it pulled."""
    summary, page = peers.handlers[StateSummary.tag], peers.handlers[StatePage.tag]
    before = pulled = len(peers.of(StatePull))
    summary(PEER, StateSummary(theirs.summary()))
    with trio.fail_after(WAIT):
        await _worked(peers)
        while len(peers.of(StatePull)) > pulled:
            pull = peers.of(StatePull)[-1]
            pulled += 1
            found, more = theirs.page(pull.buckets, pull.after, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
            page(PEER, StatePage(pull.pull, [WireEntry.of(entry) for entry in found], more))
            await _worked(peers)
    return pulled > before


async def _worked(peers: RecordingPeers) -> None:
    """Wait until the replica has worked every frame handed to it so far: it works them in
    order, so once it answers a pull sent after them (with a page, changing nothing)."""
    served = len(peers.of(StatePage))
    peers.handlers[StatePull.tag](PEER, StatePull(1, [0]))
    await peers.wait_sent(StatePage, served + 1)


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
