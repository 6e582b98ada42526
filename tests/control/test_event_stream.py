"""The event stream over the control socket: subscribing, and what a closed connection leaves."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from meshactors.daemon.services import Services
from meshactors.store.events import MAX_REPLAY_BYTES
from tests.support import LineClient, publish

CYCLES = 100  # connections that subscribe and close at once: an unanswered join races the close


async def events_figures(client: LineClient) -> dict[str, Any]:
    """The `events` actor's figures, as `inspect` shows them."""
    tree = (await client.call("inspect"))["data"]
    (events,) = [node for node in tree["children"] if node["name"] == "events"]
    figures: dict[str, Any] = events["figures"]
    return figures


async def until_only_one_client(daemon: Services) -> None:
    """Wait until every client actor but one has ended (its cleanups run)."""
    clients = daemon.tree.children["control"].children
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
