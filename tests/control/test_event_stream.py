"""The event stream over the control socket: subscribing, and what a closed connection leaves."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import Broadcast, Subscriber
from meshactors.control import client as client_module
from meshactors.control import event_stream
from meshactors.control.event_stream import HubSubscription, SlowConsumer, follow
from meshactors.daemon.services import Services
from meshactors.ops import system_ops
from meshactors.store.events import MAX_REPLAY_BYTES, Event
from tests.support import LineClient, client_figures, client_id_of, publish, refuse_writes

CYCLES = 100  # connections that subscribe and close at once: an unanswered join races the close
LIVE = 10  # live events published while a replay waits
FLOOD = 48  # events of 128 KiB published to a subscriber that reads nothing meanwhile


async def events_figures(client: LineClient) -> dict[str, Any]:
    """The `events` actor's figures, as `inspect` shows them."""
    tree = (await client.call("inspect"))["data"]
    (events,) = [node for node in tree["children"] if node["name"] == "events"]
    figures: dict[str, Any] = events["figures"]
    return figures


async def until_only_one_client(daemon: Services) -> None:
    """Wait until every client actor but one has ended (its cleanups run)."""
    clients = daemon.tree.children["control"].children
    # Polled: nothing signals a client actor's end outside its supervisor (the tree's node
    # just goes); each look waits for every task to block, and the whole wait is bounded.
    with trio.fail_after(30):
        while sum(node.kind == "client" for node in clients.values()) > 1:
            await trio.testing.wait_all_tasks_blocked()


async def test_a_connection_closed_before_its_subscribe_is_answered_leaves_no_subscriber(
    daemon: Services, connect: Any
) -> None:
    watcher = await connect()
    baseline = (await events_figures(watcher))["subscribers"]  # the outbox watches events too
    for _ in range(CYCLES):
        stream = await trio.open_unix_socket(str(daemon.paths.socket))
        await stream.send_all(b'{"id":1,"op":"events_subscribe"}\n')
        await stream.aclose()
    await until_only_one_client(daemon)
    assert (await events_figures(watcher))["subscribers"] == baseline


async def test_a_replay_larger_than_one_read_is_replayed_whole_and_in_order(
    daemon: Services, connect: Any
) -> None:
    third = "x" * (MAX_REPLAY_BYTES // 3)
    logged = await publish(daemon.events, "test_big", *({"n": n, "pad": third} for n in range(7)))
    client = await connect()
    answer = await client.call("events_subscribe", since=logged[0].event_id - 1)
    assert answer["data"]["last_event_id"] == logged[-1].event_id
    with trio.fail_after(30):
        replayed = [await client.frame() for _ in logged]
    assert [frame["kind"] for frame in replayed] == ["test_big"] * 7
    assert [frame["n"] for frame in replayed] == list(range(7))


async def test_live_events_a_replay_delivered_are_not_reported_lagged(
    daemon: Services, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system_ops, "EVENT_CAPACITY", 2)  # the live queue overflows at once
    client = await connect()
    (before,) = await publish(daemon.events, "test_before", {})
    await daemon.events.flush()
    stall = sqlite3.connect(daemon.paths.state_db, isolation_level=None)
    with contextlib.closing(stall):
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the log writes wait on it
        daemon.events.publish("test_stalled", {})
        await trio.testing.wait_all_tasks_blocked()  # its log write is the store's now
        await client.call("events_subscribe", since=before.event_id)
        await trio.testing.wait_all_tasks_blocked()  # the replay waits for the log to catch up
        for n in range(LIVE):
            daemon.events.publish("test_live", {"n": n})  # live: 2 queued, the rest skipped
        await trio.testing.wait_all_tasks_blocked()
        stall.execute("COMMIT")
    with trio.fail_after(30):
        replayed = [(await client.frame())["kind"] for _ in range(1 + LIVE)]
        await trio.testing.wait_all_tasks_blocked()  # what the live queue held is written too
        await publish(daemon.events, "test_end", {})
        after = [(await client.frame())["kind"]]
        while after[-1] != "test_end":
            after.append((await client.frame())["kind"])
    assert replayed == ["test_stalled", *["test_live"] * LIVE]
    assert after == ["test_end"]  # no `lagged`: the events skipped live were replayed


@attrs.define
class Written:
    """An event sink that keeps what it was given."""

    frames: list[tuple[str, Any]] = attrs.field(factory=list)

    async def send_event(self, event: Event) -> None:
        self.frames.append(("event", event.event_id))

    async def send_frame(self, kind: str, data: dict[str, Any]) -> None:
        self.frames.append((kind, data))


async def followed(live: Subscriber[Event], subscribed_at: int, after: int) -> list[Any]:
    """What `follow` writes of what `live` holds (then it waits for more, and is stopped)."""
    sink = Written()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, HubSubscription(live, subscribed_at), after, sink)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    return sink.frames


def ticks(broadcast: Broadcast[Event], *event_ids: int) -> None:
    for event_id in event_ids:
        broadcast.publish(Event(event_id, "tick", {}, 0))


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (1, [("event", 2), ("lagged", {"skipped": 1}), ("event", 4)]),  # where 3 was skipped
        (3, [("event", 4)]),  # 3 was replayed
    ],
)
async def test_a_lagged_notice_leaves_out_a_skipped_event_replayed_before_a_later_one(
    after: int, expected: list[Any]
) -> None:
    broadcast = Broadcast[Event]()
    live = broadcast.subscribe(2)
    ticks(broadcast, 1, 2, 3)  # 3 is skipped
    await live.receive()  # 1 is read: 4 is queued after the skipped 3, a hole among the ids
    ticks(broadcast, 4)
    assert await followed(live, 1, after) == expected


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (0, [("event", 1), ("event", 2), ("lagged", {"skipped": 3})]),
        (4, [("lagged", {"skipped": 1})]),  # 3 and 4 were replayed, 5 was not
        (5, []),
    ],
)
async def test_a_lagged_notice_leaves_out_the_skipped_events_up_to_the_replay(
    after: int, expected: list[Any]
) -> None:
    broadcast = Broadcast[Event]()
    live = broadcast.subscribe(2)
    ticks(broadcast, 1, 2, 3, 4, 5)  # 3 to 5 are skipped: the ids after the last one read
    assert await followed(live, 0, after) == expected


async def test_a_stream_past_the_lag_limit_is_cut_off_though_the_replay_had_what_it_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_stream, "LAG_DISCONNECT_LIMIT", 2)
    broadcast = Broadcast[Event]()
    live = broadcast.subscribe(1)
    ticks(broadcast, 1, 2, 3, 4)  # 2 to 4 are skipped: past the limit, all of them replayed
    broadcast.close()
    sink = Written()
    with trio.fail_after(5), pytest.raises(SlowConsumer):
        await follow(HubSubscription(live, 0), 4, sink)
    assert sink.frames == []  # no notice: it missed nothing for good


async def test_inspect_shows_the_events_a_subscriber_was_told_it_missed(
    daemon: Services, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "OUTGOING_CAPACITY", 1)
    monkeypatch.setattr(system_ops, "EVENT_CAPACITY", 2)
    stalled = await connect()
    stalled_id = await client_id_of(stalled)
    await stalled.call("events_subscribe")
    padding = "x" * 128 * 1024
    for n in range(FLOOD):  # more than the socket, the writer and the queues hold
        daemon.events.publish("test_big", {"n": n, "padding": padding})
    await trio.testing.wait_all_tasks_blocked()  # the writer waits on the socket: the rest skipped
    with trio.fail_after(30):
        frame = await stalled.frame()
        while frame["kind"] != "lagged":
            frame = await stalled.frame()
    assert frame["skipped"] > 0
    figures = await client_figures(await connect(), stalled_id)
    assert (figures["events"], figures["events_lagged"]) == (True, frame["skipped"])


async def test_a_hole_after_every_logged_event_is_told_after_the_replay_before_live_ones(
    daemon: Services, connect: Any
) -> None:
    before, _ = await publish(daemon.events, "test_kept", {"n": 0}, {"n": 1})
    await daemon.events.flush()
    await refuse_writes(daemon.store, True)  # a full disk: the log loses what comes now
    await publish(daemon.events, "test_lost", {})
    await daemon.events.flush()
    client = await connect()
    await client.call("events_subscribe", since=before.event_id)
    with trio.fail_after(30):
        frames = [await client.frame() for _ in range(2)]
        await publish(daemon.events, "test_live", {})
        frames.append(await client.frame())
    assert [frame["kind"] for frame in frames] == ["test_kept", "events_gap", "test_live"]
    assert frames[1]["since"] == before.event_id
