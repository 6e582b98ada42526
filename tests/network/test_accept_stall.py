"""A send whose accept the store commits only after the accept's usual deadline (a disk that
stalls, a loop frozen past it) still goes out: what the accept claimed for an active peer is
sent, not left inflight until a restart, and the `timeout` the client heard is retried safely
with the send's `client_message_id`; and while the store stalls, at most MAX_ACCEPTING runs
are being accepted at once (the rest wait in the outbox's inbox), all sent once it is free;
a run that waited for its place claims by the peers active then, not those before the wait;
an outbox crash answers the runs it held `unavailable` at once, not `timeout` at their deadline."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.daemon import outbox as outbox_module
from meshactors.daemon.outbox import Outbox
from meshactors.store.actor import STORE_CALL_TIMEOUT
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair
from tests.network.test_delivery import delivered
from tests.network.test_restarts import debug_pair
from tests.support import LineClient, store_quiet


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real time that the test can also jump past every deadline."""
    return trio.testing.MockClock(rate=1)


async def test_an_accept_committed_after_its_deadline_is_sent_and_retried_by_its_key(
    mesh: Mesh, clock: trio.testing.MockClock
) -> None:
    a, b = await active_pair(mesh)
    send: dict[str, Any] = {"network": NET, "to": b.device_id, "message": "late"}
    send["client_message_id"] = "late-1"
    await store_quiet(a.services.store, WAIT)  # only the accept will wait on the stalled disk
    stall = sqlite3.connect(a.services.paths.state_db, isolation_level=None)
    with contextlib.closing(stall):
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the store's accept waits on it
        answer = await _answer_past_the_deadline(a, send, clock)
        stall.execute("COMMIT")
    assert answer["error"]["code"] == "timeout"  # the client heard no outcome
    assert a.crashes() == {}  # no restart put the claimed delivery back to pending

    event = await b.wait_event("message", client_message_id="late-1")
    assert (event["from"], event["message"]) == (a.device_id, "late")
    retried = await a.call("send", **send)  # the client retries with its key
    await delivered(a, retried["id"])
    again = await a.call("send", **send)
    assert (again["outcome"], again["id"]) == ("duplicate", retried["id"])


async def _answer_past_the_deadline(
    daemon: Daemon, params: dict[str, Any], clock: trio.testing.MockClock
) -> dict[str, Any]:
    """Send while the store is stalled, jump past every deadline of that moment, and return
    the send's answer."""
    answers: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:

        async def sending() -> None:
            answers.append(await daemon.client.call("send", **params))

        nursery.start_soon(sending)
        await trio.testing.wait_all_tasks_blocked()  # the accept is the store's now
        clock.jump(STORE_CALL_TIMEOUT + 1)
    return answers[0]


async def test_a_stalled_store_holds_at_most_max_accepting_accepts_and_sends_all_once_free(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "MAX_ACCEPTING", 2, raising=False)
    a, b = await active_pair(mesh)
    outbox = a.services.outbox
    assert isinstance(outbox, Outbox)
    await store_quiet(a.services.store, WAIT)
    keys = [f"held-{n}" for n in range(5)]
    answers: list[dict[str, Any]] = []
    stall = sqlite3.connect(a.services.paths.state_db, isolation_level=None)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(contextlib.closing(stall))
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: every accept waits on it
        async with trio.open_nursery() as nursery:
            for key in keys:  # a connection each: a run each
                await _start_run(stack, nursery, a, b, key, answers.append)
            await trio.testing.wait_all_tasks_blocked()  # every run is the outbox's now
            assert _accept_tasks() == 2  # the other runs wait, holding no task
            assert outbox.figures()["accepting"] == 2
            stall.execute("COMMIT")
    assert all(answer["ok"] for answer in answers)
    for key in keys:
        event = await b.wait_event("message", client_message_id=key)
        assert event["from"] == a.device_id
    assert outbox.figures()["accepting"] == 0


async def test_an_outbox_crash_answers_the_runs_it_held_unavailable_at_once(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs the outbox had taken and not answered (two being accepted, one waiting for an
    accept place) are answered `unavailable` when it crashes, not left to wait out their
    STORE_CALL_TIMEOUT; runs still in its inbox are the restarted outbox's; a retry by each
    key delivers every message."""
    monkeypatch.setattr(outbox_module, "MAX_ACCEPTING", 2, raising=False)
    a, b = await debug_pair(mesh)
    await store_quiet(a.services.store, WAIT)
    keys = [f"held-{n}" for n in range(5)]
    answers, answered = trio.open_memory_channel[dict[str, Any]](len(keys))
    stall = sqlite3.connect(a.services.paths.state_db, isolation_level=None)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(contextlib.closing(stall))
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: every accept waits on it
        async with trio.open_nursery() as nursery:
            for key in keys:  # a connection each: a run each
                await _start_run(stack, nursery, a, b, key, answers.send_nowait)
                await trio.testing.wait_all_tasks_blocked()  # the run is the outbox's now
            assert _accept_tasks() == 2  # one run waits for a place, two in the inbox
            await a.call("debug_crash", path="daemon/outbox")
            with trio.fail_after(WAIT):  # well before any of their deadlines
                held = [await answered.receive() for _ in range(3)]
            stall.execute("COMMIT")
    queued = [answered.receive_nowait() for _ in range(2)]
    assert [answer["error"]["code"] for answer in held] == ["unavailable"] * 3
    assert all(answer["ok"] for answer in queued)
    for key in keys:  # an `unavailable` send may have been accepted: its key tells
        params = {"network": NET, "to": b.device_id, "message": key, "client_message_id": key}
        assert (await a.call("send", **params))["outcome"] in ("accepted", "duplicate")
    for key in keys:
        await b.wait_event("message", client_message_id=key)


async def test_a_peer_that_left_while_a_run_waited_for_its_accept_place_uses_up_no_attempt(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "MAX_ACCEPTING", 1, raising=False)
    a, b = await active_pair(mesh)
    outbox = a.services.outbox
    assert isinstance(outbox, Outbox)
    await store_quiet(a.services.store, WAIT)
    answers: list[dict[str, Any]] = []
    stall = sqlite3.connect(a.services.paths.state_db, isolation_level=None)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(contextlib.closing(stall))
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the first accept holds the place
        async with trio.open_nursery() as nursery:
            for key in ("holding", "waiting"):  # a connection each: a run each
                await _start_run(stack, nursery, a, b, key, answers.append)
                await trio.testing.wait_all_tasks_blocked()  # the run is the outbox's now
            assert _accept_tasks() == 1  # "waiting" waits for the place, b still active
            await b.stop()
            await a.wait_status(b, "offline")
            stall.execute("COMMIT")
    assert all(answer["ok"] for answer in answers)
    await store_quiet(a.services.store, WAIT)  # what the accepts set off is recorded
    rows = (await a.call("outbox_list", limit=10))["rows"]
    (waiting,) = [row for row in rows if row["client_message_id"] == "waiting"]
    (delivery,) = waiting["deliveries"]
    # Accepted after b left: it waits for b, not sent to a peer that is gone and failed.
    assert (delivery["status"], delivery["attempts"], delivery["last_error"]) == (
        "pending",
        0,
        None,
    )


@pytest.mark.parametrize("removed", [False, True], ids=["left", "left-and-removed"])
async def test_a_peer_that_left_while_its_claim_was_being_stored_uses_up_no_attempt(
    mesh: Mesh, removed: bool
) -> None:
    """Core's send refuses the claimed batch: `peer_not_active`, or `no_such_peer` once a's
    core has forgotten b altogether (roster_remove drops an absent peer)."""
    a, b = await active_pair(mesh)
    outbox = a.services.outbox
    assert isinstance(outbox, Outbox)
    await store_quiet(a.services.store, WAIT)
    answers: list[dict[str, Any]] = []
    params = {"network": NET, "to": b.device_id, "message": "m", "client_message_id": "left"}
    removals: list[dict[str, Any]] = []
    stall = sqlite3.connect(a.services.paths.state_db, isolation_level=None)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(contextlib.closing(stall))
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the accept waits on it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_call, a.client, "send", params, answers.append)
            await trio.testing.wait_all_tasks_blocked()  # b's place reserved, the accept waits
            await b.stop()
            await a.wait_status(b, "offline")
            if removed:  # a's core waits on the store to forget b, before the send reaches it
                remover = LineClient(await stack.enter_async_context(await _connect(a)))
                removal = {"network": NET, "device_id": b.device_id}
                nursery.start_soon(_call, remover, "roster_remove", removal, removals.append)
                await trio.testing.wait_all_tasks_blocked()
            stall.execute("COMMIT")
    (answer,) = answers
    assert answer["data"]["status"] == "inflight"  # claimed for b, active when it was read
    assert all(removal["ok"] for removal in removals)
    await store_quiet(a.services.store, WAIT)  # the attempt that found b gone is recorded
    (row,) = (await a.call("outbox_list", limit=10))["rows"]
    (delivery,) = row["deliveries"]
    # Never on its way: it waits for b again, its attempts untouched.
    assert (delivery["status"], delivery["attempts"], delivery["last_error"]) == (
        "pending",
        0,
        None,
    )
    assert outbox.figures()["redue"] == 1


async def _connect(daemon: Daemon) -> trio.SocketStream:
    """A new connection to the daemon's control socket."""
    return await trio.open_unix_socket(str(daemon.services.paths.socket))


async def _start_run(
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
    a: Daemon,
    b: Daemon,
    key: str,
    keep: Callable[[dict[str, Any]], None],
) -> None:
    """Send `key` from a to b (its client_message_id too) on a connection of its own, so that
    it is a run of its own, and `keep` the answer when it comes."""
    client = LineClient(await stack.enter_async_context(await _connect(a)))
    params = {"network": NET, "to": b.device_id, "message": key, "client_message_id": key}
    nursery.start_soon(_call, client, "send", params, keep)


async def _call(
    client: LineClient, op: str, params: dict[str, Any], keep: Callable[[dict[str, Any]], None]
) -> None:
    """Call `op` on `client` and `keep` its answer."""
    keep(await client.call(op, **params))


def _accept_tasks() -> int:
    """The outbox's accept tasks running now, found in trio's task tree."""
    count, tasks = 0, [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        assert task is not None
        count += task.name.endswith("Outbox._accept")
        tasks.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count
