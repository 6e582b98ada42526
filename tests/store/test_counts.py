"""The counts the outbox's writes keep in `row_counts` stay equal to the rows in each status,
whatever sequence of outbox changes runs (claims at accept, pruning, a network's purge,
requeue and abort included)."""

import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshactors.store import outbox
from meshactors.store.db import open_database, row_counts
from meshactors.store.networks import delete_network
from meshactors.store.outbox import DeliveryKey
from meshactors.store.retention import IDEMPOTENCY_WINDOW_MS, Retention, prune_outbox
from tests.store.test_outbox import T0, request

PEERS = ("a", "b")
NETWORKS = ("net1", "net2")
STEPS = (
    "accept",
    "accept_claimed",
    "claim",
    "deliver",
    "fail",
    "fail_for_good",
    "due_now",
    "expire",
    "recover",
    "requeue",
    "abort",
    "prune",
    "purge",
)
COUNTED = {
    "deliveries": ("pending", "inflight", "done", "dead"),
    "outbox": ("pending", "inflight", "done", "dead", "aborted"),
}


def _actual(conn: sqlite3.Connection, table: str, statuses: tuple[str, ...]) -> dict[str, int]:
    found = dict.fromkeys(statuses, 0)
    for status, n in conn.execute(f"SELECT status, count(*) FROM {table} GROUP BY status"):
        if status in found:
            found[status] = n
    return found


def _deliveries(conn: sqlite3.Connection, status: str) -> list[tuple[str, str]]:
    return list(
        conn.execute("SELECT outbox_id, recipient FROM deliveries WHERE status = ?", (status,))
    )


def _step(conn: sqlite3.Connection, step: str, pick: int, at: int) -> None:
    """One change to the outbox through its real API (a no-op where nothing fits)."""
    recipients = list(PEERS[: 1 + pick % 2])
    if step in ("accept", "accept_claimed"):
        room = {peer: pick % 3 for peer in PEERS} if step == "accept_claimed" else None
        fields = request(
            network=NETWORKS[pick % 2],
            client_message_id=f"cm-{at}",
            recipients=recipients,
            destination_kind="all",
            now_ms=at,
        )
        outbox.accept(conn, **fields, room=room)
        return
    if step == "expire":
        outbox.expire_pending(conn, now_ms=at + outbox.TTL_MS * (pick % 2))
        return
    if step == "purge":  # the second network's sends go with it
        delete_network(conn, NETWORKS[1], purge=True)
        return
    if step == "recover":
        outbox.recover_inflight(conn, at)
        return
    if step == "prune":
        prune_outbox(
            conn, Retention(days=1, rows=1 + pick, batch=2), at + 2 * IDEMPOTENCY_WINDOW_MS
        )
        return
    if step == "requeue":
        rows, _ = outbox.list_rows(conn, status="dead", network=None, limit=5)
        if rows:
            outbox.requeue(conn, rows[pick % len(rows)].id, new_client_message_id=None, now_ms=at)
        return
    if step == "abort":
        rows, _ = outbox.list_rows(conn, status=None, network=None, limit=5)
        abortable = [row for row in rows if row.status in outbox.ABORTABLE]
        if abortable:
            outbox.abort(conn, abortable[pick % len(abortable)].id, now_ms=at)
        return
    status = "pending" if step == "claim" else "inflight"
    found = _deliveries(conn, status)
    if not found:
        return
    outbox_id, recipient = found[pick % len(found)]
    if step == "claim":
        outbox.mark_inflight(conn, [DeliveryKey(outbox_id, recipient)], at)
    elif step == "deliver":
        outbox.mark_delivered_many(conn, [DeliveryKey(outbox_id, recipient)] * (1 + pick % 2), at)
    elif step == "due_now":
        outbox.mark_due_now(conn, outbox_id, recipient, at)
    else:
        permanent = step == "fail_for_good"
        outbox.mark_failed(
            conn, outbox_id, recipient, error_code="x", permanent=permanent, now_ms=at
        )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.sampled_from(STEPS), st.integers(0, 5)), max_size=40))
def test_counts_equal_the_rows_after_any_changes(
    tmp_path: Path, steps: list[tuple[str, int]]
) -> None:
    conn = open_database(tmp_path / f"counts-{len(list(tmp_path.iterdir()))}.db")
    try:
        for at, (step, pick) in enumerate(steps, start=T0):
            _step(conn, step, pick, at)
        for table, statuses in COUNTED.items():
            assert row_counts(conn, table, statuses) == _actual(conn, table, statuses)
    finally:
        conn.close()
