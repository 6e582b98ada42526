"""What a peer sends the state map: writes it may not make and values past the limits are
dropped and counted, bad frames are rejected frames, and the daemon serves on; a hand-made
peer can pull the map page by page like any daemon."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from meshactors.clock import wall_ms
from meshactors.netstate import replica
from meshactors.netstate.entry import BUCKETS, Entry
from meshactors.netstate.frames import StatePage, StatePull, StatePut, StateSummary, WireEntry
from meshactors.netstate.hlc import Stamp
from meshactors.netstate.statemap import StateMap
from meshactors.turns import turn_gap
from tests.network.conftest import NET, WAIT, Mesh, OpFailed
from tests.network.rawpeer import RawPeer, approved_raw_peer
from tests.network.test_state import set_many, state_figures


def _raw(**fields: Any) -> bytes:
    return json.dumps(fields, allow_nan=True).encode()


def _entry(**fields: Any) -> dict[str, Any]:
    return {"key": "k", "value": 1, "deleted": False, "wall": 1, "counter": 0} | fields


async def _next(raw: RawPeer, cls: type[Any]) -> Any:
    with trio.fail_after(WAIT):
        while True:
            _, frame = await raw.receive()
            if isinstance(frame, cls):
                return frame


async def test_bad_writes_from_a_peer_are_dropped_and_counted(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b, raw = await approved_raw_peer(mesh, nursery)
    other = RawPeer(NET).device_id  # a device that is not the sender
    dropped_alone = [
        _entry(by=other),  # not the sender's own write
        _entry(by=raw.device_id, value="x" * 20_000),  # past the value limit
        _entry(by=raw.device_id, wall=2**60),  # a stamp out of range
        # the last stamp in range, which would leave our clock none to give our next write
        _entry(by=raw.device_id, key="far", wall=2**53 - 1, counter=2**31 - 1),
    ]
    for entry in dropped_alone:
        await raw.send_raw(b.device_id, _raw(t="state_put", entries=[entry]))
    rejected = [
        _raw(t="state_put", entries=[]),
        _raw(t="state_put", entries=[_entry(by=raw.device_id, key="")]),
        _raw(t="state_put", entries=[_entry(by=raw.device_id, deleted=True)]),
        _raw(t="state_summary", digests="zz"),
        _raw(t="state_pull", pull=1, buckets=[BUCKETS]),
        _raw(t="state_page", pull=-1, entries=[]),
    ]
    for data in rejected:
        await raw.send_raw(b.device_id, data)
    good = WireEntry("fine", {"ok": True}, False, 5, 0, raw.device_id)
    await raw.send_frame(b.device_id, StatePut([good]))
    event = await b.wait_event("state_changed", key="fine")
    assert (event["value"], event["by"]) == ({"ok": True}, raw.device_id)
    assert b.crashes() == {}
    seen = await b.peer(raw.device_id)
    assert seen is not None and seen["status"] == "active"
    assert seen["rejected_frames"] == len(rejected)
    dropped = state_figures(await b.call("inspect"))["dropped"]
    assert (dropped["not_author"], dropped["value_too_large"], dropped["bad_stamp"]) == (1, 1, 1)
    assert dropped["future_stamp"] == 1
    assert await b.call("state_list", network=NET) == {
        "network": NET,
        "entries": [await b.call("state_get", network=NET, key="fine")],
        "next_cursor": None,
    }
    mine = await b.call("state_set", network=NET, key="mine", value=1)  # our clock is fine
    assert int(mine["version"].split(".")[0]) < 2**53 - 1


async def test_a_page_nobody_asked_for_is_dropped_whole_whoever_its_entries_credit(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """A page is taken only as the answer to a pull we sent its sender: an approved peer that
    pushes one unasked, its entries credited to another device (which a put could not do),
    or to b itself, or to the peer, stamped ahead to beat honest writes, has nothing merged."""
    b, raw = await approved_raw_peer(mesh, nursery)
    await b.call("state_set", network=NET, key="shared", value="honest")
    ahead = wall_ms() + 23 * 3600 * 1000  # within what b takes from a peer
    credited = (RawPeer(NET).device_id, b.device_id, raw.device_id)
    forged = [WireEntry("shared", "forged", False, ahead, 0, by) for by in credited]
    for pull, entry in enumerate(forged):
        await raw.send_frame(b.device_id, StatePage(pull, [entry], more=False))
    good = WireEntry("fine", 1, False, 5, 0, raw.device_id)
    await raw.send_frame(b.device_id, StatePut([good]))  # worked after the pages
    await b.wait_event("state_changed", key="fine")
    got = await b.call("state_get", network=NET, key="shared")
    assert (got["value"], got["by"]) == ("honest", b.device_id)
    figures = state_figures(await b.call("inspect"))
    assert figures["dropped"] == {"stale_page": len(forged)}
    assert figures["keys"] == 2


async def test_a_peer_pulls_the_map_in_pages_of_its_buckets(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b, raw = await approved_raw_peer(mesh, nursery)
    await set_many(b, {f"k{n:03d}": n for n in range(300)})
    got: list[str] = []
    after = None
    while True:
        await raw.send_frame(b.device_id, StatePull(7, list(range(BUCKETS)), after))
        page = await _next(raw, StatePage)
        assert page.pull == 7 and 0 < len(page.entries) <= 256
        got += [entry.key for entry in page.entries]
        if not page.more:
            break
        after = page.entries[-1].key
    assert got == [f"k{n:03d}" for n in range(300)]


async def test_an_empty_map_offers_no_summary_and_one_with_entries_does(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """A peer that becomes active gets our summary only if it could pull something from it: a
    mesh that holds no state sends none (at 300 daemons, 89,700 frames of 4 KiB saved); and a
    summary that asks for ours is answered only if they differ."""
    b, raw = await approved_raw_peer(mesh, nursery)
    await b.call("state_set", network=NET, key="first", value=1)
    with trio.fail_after(WAIT):
        while not isinstance(frame := (await raw.receive())[1], StatePut):
            assert not isinstance(frame, StateSummary)  # none since b saw us active
    assert [entry.key for entry in frame.entries] == ["first"]
    await raw.send_frame(b.device_id, StateSummary(b.network().state.map.summary(), ask=True))
    await raw.send_frame(b.device_id, StatePull(1, [0], None))
    with trio.fail_after(WAIT):  # an asked summary equal to b's is not answered
        while not isinstance(frame := (await raw.receive())[1], StatePage):
            assert not isinstance(frame, StateSummary)
    late = RawPeer(NET)
    await late.join(mesh.url, nursery)
    await late.hello(b.device_id)
    await b.call("roster_approve", network=NET, device_id=late.device_id)
    summary = await _next(late, StateSummary)
    assert summary.digests != "0" * len(summary.digests) and not summary.ask


def test_periodic_summaries_take_turns_at_a_bounded_rate() -> None:
    def sync_gap(active: int) -> float:
        return turn_gap(active, interval=replica.SYNC_INTERVAL, rate=replica.SYNC_RATE)

    assert sync_gap(1) == replica.SYNC_INTERVAL
    assert sync_gap(10) == replica.SYNC_INTERVAL / 10
    assert sync_gap(300) == 1.0 / replica.SYNC_RATE  # not 5 a second


async def test_the_writer_check_decides_whose_writes_are_taken(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """The one hook a closed network replaces (`StateReplica.may_write`): writes it refuses
    from a peer are dropped and counted, and our own are refused with `forbidden`."""
    b, raw = await approved_raw_peer(mesh, nursery)
    state = b.network().state
    members = {b.device_id}

    def closed(_sender: str, author: str) -> bool:
        return author in members

    await b.network().ask("use a members-only check", lambda: setattr(state, "may_write", closed))
    await raw.send_frame(b.device_id, StatePut([WireEntry("x", 1, False, 5, 0, raw.device_id)]))
    await b.call("state_set", network=NET, key="mine", value=1)
    members.add(raw.device_id)
    await raw.send_frame(b.device_id, StatePut([WireEntry("y", 2, False, 6, 0, raw.device_id)]))
    await b.wait_event("state_changed", key="y")
    assert "x" not in {e["key"] for e in (await b.call("state_list", network=NET))["entries"]}
    assert state_figures(await b.call("inspect"))["dropped"] == {"not_writer": 1}
    members.clear()
    with pytest.raises(OpFailed) as refused:
        await b.call("state_set", network=NET, key="mine", value=2)
    assert refused.value.code == "forbidden"


async def test_a_write_missed_on_the_way_is_caught_up_at_the_next_sync(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer's write that never reached us (it made it while we were active, and the frame
    was lost) is pulled after the next periodic summary, which asks for the peer's."""
    monkeypatch.setattr(replica, "SYNC_INTERVAL", 0.05)
    monkeypatch.setattr(replica, "SYNC_RATE", 20.0)
    b, raw = await approved_raw_peer(mesh, nursery)
    await b.call("state_set", network=NET, key="mine", value=1)  # an empty map asks nobody
    theirs = StateMap()
    theirs.merge(Entry.write("missed", "late", Stamp(9, 0), raw.device_id))
    while not (await _next(raw, StateSummary)).ask:  # until a periodic one asks for ours
        pass
    await raw.send_frame(b.device_id, StateSummary(theirs.summary()))
    pull = await _next(raw, StatePull)
    found, more = theirs.page(pull.buckets, pull.after, 256, 1 << 20)
    await raw.send_frame(b.device_id, StatePage(pull.pull, [WireEntry.of(e) for e in found], more))
    event = await b.wait_event("state_changed", key="missed")
    assert (event["value"], event["by"]) == ("late", raw.device_id)


async def test_frames_a_full_queue_dropped_bring_a_catch_up_with_their_sender(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica, "STATE_INBOX", 2)
    b, raw = await approved_raw_peer(mesh, nursery)
    for n in range(64):  # far more than the queue holds while the state task saves
        await raw.send_frame(
            b.device_id, StatePut([WireEntry(f"k{n}", n, False, 5, 0, raw.device_id)])
        )
    while not (await _next(raw, StateSummary)).ask:  # b asks for ours: we catch up both ways
        pass
    assert state_figures(await b.call("inspect"))["dropped"]["queue_full"] > 0
