"""Recording finished attempts (daemon.outbox.record_settled) on a real SQLite store: an attempt
that timed out after its ack finished it changes nothing and says so."""

from __future__ import annotations

from pathlib import Path

from meshactors.daemon.outbox import ACK_TIMEOUT, _Settled, record_settled
from meshactors.store import outbox as outbox_db
from meshactors.store.db import open_database
from tests.store.test_outbox import T0, send


def test_a_timeout_recorded_after_its_ack_is_no_news(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "state.db")
    sent = send(conn)  # to dev-a
    key = outbox_db.DeliveryKey(sent.id, "dev-a")
    assert outbox_db.mark_inflight(conn, [key], T0) == [key]
    late = [_Settled(sent.id, "dev-a", None), _Settled(sent.id, "dev-a", ACK_TIMEOUT)]
    assert record_settled(conn, late, T0 + 1) == ["done", "already_done"]
    (row,), _ = outbox_db.list_rows(conn, status="done", network=None, limit=10)
    assert row.deliveries[0].attempts == 0
