"""Durable messages between real daemons through a real broker: delivery acked end to end,
dedupe, offline recipients, restarts, `*` and `@tag` fan-out, requeue, abort and event
replay."""

from __future__ import annotations

import functools
import sqlite3
import time
from typing import Any

import pytest
import trio

from meshactors.daemon.outbox import Outbox
from meshactors.network.message_frames import Msg
from meshactors.store import outbox as outbox_db
from meshactors.store.db import immediate
from meshactors.store.retention import IDEMPOTENCY_WINDOW_MS, Retention, prune_outbox
from tests.network.conftest import NET, WAIT, Daemon, Mesh, OpFailed, active_pair, approve_both
from tests.support import LineClient


async def inbox_of(daemon: Daemon, count: int) -> list[dict[str, Any]]:
    """Wait until the daemon's inbox holds `count` messages; returns them all."""
    with trio.fail_after(WAIT):
        while True:
            # The mark is taken before the query: a message that lands while the query is
            # in flight is then an event after it, not one the wait below would skip.
            seen = daemon.last_event_id
            messages = (await daemon.call("inbox", limit=500))["messages"]
            if len(messages) >= count:
                return list(messages)
            await daemon.wait_event("message", after=seen)


async def outbox_row(daemon: Daemon, row_id: str) -> dict[str, Any]:
    """The outbox row `row_id` as outbox_list shows it."""
    rows = (await daemon.call("outbox_list", limit=500))["rows"]
    return dict(next(r for r in rows if r["id"] == row_id))


async def delivered(daemon: Daemon, row_id: str, recipients: int = 1) -> dict[str, Any]:
    """Wait for `recipients` message_delivered events of row `row_id`; returns the row."""
    after = 0
    for _ in range(recipients):
        event = await daemon.wait_event("message_delivered", after=after, id=row_id)
        after = event["event_id"]
    row = await outbox_row(daemon, row_id)
    assert row["status"] == "done"
    return row


async def test_a_message_reaches_the_peer_inbox_and_the_row_is_done(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    sent = await a.call(
        "send", network=NET, to=b.device_id, message="hello", meta={"k": [1]}, priority="now"
    )
    assert sent["outcome"] == "accepted"
    event = await b.wait_event("message", client_message_id=sent["client_message_id"])
    assert event["from"] == a.device_id
    assert event["message"] == "hello"
    assert event["meta"] == {"k": [1]}
    (message,) = await inbox_of(b, 1)
    assert message["seq"] == event["seq"]
    row = await delivered(a, sent["id"])
    assert row["deliveries"][0]["recipient"] == b.device_id
    again = await a.call(
        "send",
        network=NET,
        to=b.device_id,
        message="hello",
        meta={"k": [1]},
        priority="now",
        client_message_id=sent["client_message_id"],
    )
    assert again["outcome"] == "duplicate"
    assert again["id"] == sent["id"]


async def test_a_send_to_an_active_peer_goes_out_as_it_is_accepted(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    first = await a.call("send", network=NET, to=b.device_id, message="first")
    assert first["status"] == "inflight"  # claimed in the accept's own transaction
    await delivered(a, first["id"])
    await b.stop()
    await a.wait_status(b, "offline")
    waiting = await a.call("send", network=NET, to=b.device_id, message="waiting")
    assert waiting["status"] == "pending"  # no active peer: it waits for the drainer
    b = await mesh.daemon("b")
    await delivered(a, waiting["id"])
    assert [m["message"] for m in await inbox_of(b, 2)] == ["first", "waiting"]


async def test_a_redelivered_message_is_stored_once_and_acked_again(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    sent = await a.call("send", network=NET, to=b.device_id, message="once")
    await delivered(a, sent["id"])
    receiver = b.services.outbox
    assert isinstance(receiver, Outbox)
    frame = Msg(sent["id"], sent["client_message_id"], "once", None, "next", None, 1)
    await a.network().send_to_peer(b.device_id, frame)  # as a retry after a lost ack would
    # A send after the retry: frames and acks keep their order, so its ack comes after the
    # retry's late `duplicate` ack, which finds the delivery done and publishes nothing.
    later = await a.call("send", network=NET, to=b.device_id, message="later")
    await delivered(a, later["id"])
    assert receiver.counts["duplicates"] == 1
    assert len(await inbox_of(b, 2)) == 2
    assert [e["message"] for e in b.events if e["kind"] == "message"] == ["once", "later"]
    assert [e["id"] for e in a.events if e["kind"] == "message_delivered"] == [
        sent["id"],
        later["id"],
    ]


async def test_a_key_reused_after_its_row_was_pruned_reaches_the_peer_as_a_duplicate(
    mesh: Mesh,
) -> None:
    # docs/protocol.md, "Retention": the recipient keeps the first message under the key,
    # the sender's new row ends done all the same.
    a, b = await active_pair(mesh)
    first = await a.call(
        "send", network=NET, to=b.device_id, message="first", client_message_id="k"
    )
    await delivered(a, first["id"])
    two_days_on = int(time.time() * 1000) + 2 * IDEMPOTENCY_WINDOW_MS
    prune = functools.partial(prune_outbox, retention=Retention(days=1), now_ms=two_days_on)
    assert await a.services.store.call(prune, what="test: prune") == 1
    second = await a.call(
        "send", network=NET, to=b.device_id, message="second", client_message_id="k"
    )
    assert (second["outcome"], second["client_message_id"]) == ("accepted", "k")
    assert second["id"] != first["id"]
    await delivered(a, second["id"])
    receiver = b.services.outbox
    assert isinstance(receiver, Outbox)
    assert receiver.counts["duplicates"] == 1
    assert [m["message"] for m in await inbox_of(b, 1)] == ["first"]
    assert [e["message"] for e in b.events if e["kind"] == "message"] == ["first"]


async def test_messages_to_an_offline_peer_wait_then_all_arrive(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await b.stop()
    await a.wait_status(b, "offline")
    ids = [
        (await a.call("send", network=NET, to=b.device_id, message=f"m{i}"))["id"]
        for i in range(50)
    ]
    rows = (await a.call("outbox_list", status="pending", limit=500))["rows"]
    assert {r["id"] for r in rows} == set(ids)
    b = await mesh.daemon("b")  # the same home: roster and identity survive
    messages = await inbox_of(b, 50)
    assert sorted(m["message"] for m in messages) == sorted(f"m{i}" for i in range(50))
    for row_id in ids:
        await delivered(a, row_id)


async def sent_while_both_were_down(
    mesh: Mesh, message: str, *edits: tuple[str, tuple[Any, ...]]
) -> tuple[Daemon, Daemon, dict[str, Any]]:
    """A sends `message` to an offline B; with A stopped its store gets `edits` (SQL and
    parameters, as a crash or failed attempts leave it); both start again. A, B and the send."""
    a, b = await active_pair(mesh)
    await b.stop()
    await a.wait_status(b, "offline")
    sent = await a.call("send", network=NET, to=b.device_id, message=message)
    await a.stop()
    conn = sqlite3.connect(a.home / "state.db", isolation_level=None)
    for statement, parameters in edits:
        conn.execute(statement, parameters)
    conn.close()
    a = await mesh.daemon("a")
    b = await mesh.daemon("b")
    (received,) = await inbox_of(b, 1)
    assert received["message"] == message
    return a, b, sent


async def test_inflight_rows_left_by_a_crash_are_sent_again_at_start(mesh: Mesh) -> None:
    a, _, sent = await sent_while_both_were_down(
        mesh,
        "stranded",
        ("UPDATE deliveries SET status = 'inflight'", ()),  # as a SIGKILL mid-send leaves it
        ("UPDATE outbox SET status = 'inflight'", ()),
    )
    await delivered(a, sent["id"])


async def test_a_delivery_waiting_out_a_backoff_goes_when_its_peer_returns(mesh: Mesh) -> None:
    an_hour = 3_600_000 + int(time.time() * 1000)  # as eight failed attempts could leave it
    edit = ("UPDATE deliveries SET attempts = 8, next_attempt_at = ?", (an_hour,))
    a, _, sent = await sent_while_both_were_down(mesh, "backed off", edit)
    row = await delivered(a, sent["id"])
    assert row["deliveries"][0]["attempts"] == 8  # cut short, not counted as a failure
    outbox = a.services.outbox
    assert isinstance(outbox, Outbox)
    assert outbox.figures()["backoffs_cut"] == 1


async def test_star_and_tag_fan_out_per_recipient(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    c = await mesh.daemon("c")
    await c.join(mesh.url)
    await approve_both(a, c)
    await c.call("capabilities_set", network=NET, capabilities={"tags": ["gpu"]})
    await a.wait_event("peer_capabilities", device_id=c.device_id)
    everyone = await a.call("send", network=NET, to="*", message="all")
    tagged = await a.call("send", network=NET, to="@gpu", message="gpu only")
    assert tagged["destination"] == {"kind": "tag", "ref": "gpu"}
    row = await delivered(a, everyone["id"], recipients=2)
    assert sorted(d["recipient"] for d in row["deliveries"]) == sorted([b.device_id, c.device_id])
    tag_row = await delivered(a, tagged["id"])
    assert [d["recipient"] for d in tag_row["deliveries"]] == [c.device_id]
    assert sorted(m["message"] for m in await inbox_of(c, 2)) == ["all", "gpu only"]
    assert [m["message"] for m in await inbox_of(b, 1)] == ["all"]
    with pytest.raises(OpFailed) as nobody:
        await a.call("send", network=NET, to="@nothing", message="x")
    assert nobody.value.code == "no_recipients"


async def test_requeue_sends_a_dead_row_again_under_a_new_id(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await b.stop()
    await a.wait_status(b, "offline")
    sent = await a.call("send", network=NET, to=b.device_id, message="again")
    with pytest.raises(OpFailed) as pending:  # still being tried
        await a.call("outbox_requeue", outbox_id=sent["id"])
    assert pending.value.code == "not_requeueable"
    kill = functools.partial(
        outbox_db.mark_failed,
        outbox_id=sent["id"],
        recipient=b.device_id,
        error_code="invalid_message",
        permanent=True,
        now_ms=int(time.time() * 1000),
    )
    assert await a.services.store.call(kill, what="test: the delivery dies") == "dead"
    answer = await a.call("outbox_requeue", outbox_id=sent["id"], new_client_message_id="retry-1")
    assert answer["row"]["client_message_id"] == "retry-1"
    assert answer["row"]["destination"] == {"kind": "peer", "ref": b.device_id}
    old = await outbox_row(a, sent["id"])
    assert old["status"] == "aborted"
    assert old["superseded_by"] == answer["row"]["id"]
    with pytest.raises(OpFailed) as done_twice:
        await a.call("outbox_requeue", outbox_id=sent["id"])
    assert done_twice.value.code == "not_requeueable"
    assert answer["row"]["origin_client_message_id"] == sent["client_message_id"]
    b = await mesh.daemon("b")
    (message,) = await inbox_of(b, 1)
    assert message["client_message_id"] == sent["client_message_id"]  # the same message
    await delivered(a, answer["row"]["id"])


def ack_never_came(conn: sqlite3.Connection, outbox_id: str) -> None:
    """Make a delivered send dead, as the TTL sweep leaves one whose acks were all lost."""
    with immediate(conn):
        for table, key in (("deliveries", "outbox_id"), ("outbox", "id")):
            conn.execute(f"UPDATE {table} SET status = 'dead' WHERE {key} = ?", (outbox_id,))
            conn.execute(
                "UPDATE row_counts SET n = n + (CASE status WHEN 'dead' THEN 1 ELSE -1 END)"
                " WHERE tbl = ? AND status IN ('done', 'dead')",
                (table,),
            )
        expired = "UPDATE deliveries SET last_error = 'expired' WHERE outbox_id = ?"
        conn.execute(expired, (outbox_id,))


async def test_a_requeued_copy_of_a_message_that_arrived_reaches_the_program_once(
    mesh: Mesh,
) -> None:
    a, b = await active_pair(mesh)
    sent = await a.call("send", network=NET, to=b.device_id, message="once only")
    await b.wait_event("message", client_message_id=sent["client_message_id"])
    await delivered(a, sent["id"])
    lost = functools.partial(ack_never_came, outbox_id=sent["id"])
    await a.services.store.call(lost, what="test: the ack never came")
    assert (await outbox_row(a, sent["id"]))["status"] == "dead"

    answer = await a.call("outbox_requeue", outbox_id=sent["id"])
    await delivered(a, answer["row"]["id"])  # acked `duplicate`: the recipient has it

    receiver = b.services.outbox
    assert isinstance(receiver, Outbox)
    assert receiver.counts["duplicates"] == 1
    assert [m["message"] for m in await inbox_of(b, 1)] == ["once only"]
    assert [e["message"] for e in b.events if e["kind"] == "message"] == ["once only"]


async def test_an_aborted_send_never_reaches_its_peer_when_it_comes_back(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await b.stop()
    await a.wait_status(b, "offline")
    sent = await a.call("send", network=NET, to=b.device_id, message="never")
    before = a.last_event_id
    answer = await a.call("outbox_abort", outbox_id=sent["id"])
    assert answer == {"row": await outbox_row(a, sent["id"])}  # as outbox_list shows it
    row = answer["row"]
    assert (row["status"], row["superseded_by"]) == ("aborted", None)
    assert [(d["status"], d["last_error"]) for d in row["deliveries"]] == [("dead", "aborted")]
    dead = await a.wait_event("message_dead", after=before, id=sent["id"])
    assert (dead["recipient"], dead["error"]) == (b.device_id, "aborted")

    later = await a.call("send", network=NET, to=b.device_id, message="later")
    b = await mesh.daemon("b")  # back on the same path: the aborted send stays behind
    await delivered(a, later["id"])
    assert [m["message"] for m in await inbox_of(b, 1)] == ["later"]
    assert (await outbox_row(a, sent["id"]))["status"] == "aborted"

    with pytest.raises(OpFailed) as again:
        await a.call("outbox_abort", outbox_id=sent["id"])
    assert again.value.code == "conflict"
    assert "is aborted" in str(again.value)
    with pytest.raises(OpFailed) as done:
        await a.call("outbox_abort", outbox_id=later["id"])
    assert done.value.code == "conflict"
    assert "is done" in str(done.value)
    assert (await outbox_row(a, later["id"]))["status"] == "done"
    with pytest.raises(OpFailed) as unknown:
        await a.call("outbox_abort", outbox_id="01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert unknown.value.code == "not_found"
    assert a.crashes() == {}


async def test_message_events_replay_after_since_on_a_new_subscription(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    before = b.last_event_id
    for i in range(3):
        await a.call("send", network=NET, to=b.device_id, message=f"r{i}")
    await inbox_of(b, 3)
    late = LineClient(await trio.open_unix_socket(str(b.home / "daemon.sock")))
    await late.call("events_subscribe", since=before)
    replayed = []
    with trio.fail_after(WAIT):
        while len(replayed) < 3:
            frame = await late.frame()
            if frame.get("kind") == "message":
                replayed.append(frame["message"])
    assert sorted(replayed) == ["r0", "r1", "r2"]
