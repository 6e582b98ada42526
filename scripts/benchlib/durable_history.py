"""Does a durable send cost more after a million? Accept rate and drain-pass cost of the same
daemon build with 0 and with HISTORY_ROWS finished sends in its state database, in one run.

The history is written straight into the SQLite file (one transaction of executemany) while
the daemon is down: delivered sends, recent enough that retention keeps them all. Accepts are
timed against both daemons in alternating rounds (the machine is shared: alternation spreads
its noise over both), with the daemon's own CPU time per accept beside the wall-clock rate.
The drain pass (claim due deliveries, the next due time, the delivery counts, then putting
the claimed ones back) is timed in this process on each file in process CPU time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.daemon.outbox import PEER_WINDOW, claim_due
from meshactors.store import outbox
from meshactors.store.db import open_database
from scripts.benchlib import resources
from scripts.benchlib.durable import (
    BODY,
    NET,
    daemon_up,
    ghost_device_id,
    machine,
    progress,
    send_burst,
    socket_of,
    update_doc,
)
from scripts.demo_mesh import Home, broker

HISTORY_ROWS = 1_000_000
HISTORY_BATCH = 100_000  # rows handed to one executemany (all in one transaction)
ROUNDS = 5  # alternating measurement rounds per history size; the median is reported
PENDING = 256  # pending deliveries each drain pass finds (to one ghost peer)
TARGET = 0.10  # with history, within this share of the cost without
DOC_BEGIN, DOC_END = "<!-- durable-history:begin -->", "<!-- durable-history:end -->"


@attrs.frozen
class HistorySizes:
    rows: int
    accepts: int  # sends per round
    passes: int  # drain passes per round


FULL_HISTORY = HistorySizes(rows=HISTORY_ROWS, accepts=2000, passes=200)
SMOKE_HISTORY = HistorySizes(rows=2000, accepts=50, passes=5)


def write_history(db: Path, network: str, recipient: str, rows: int, body: str) -> float:
    """Insert `rows` delivered sends (outbox + deliveries rows) in one transaction; seconds."""
    began = time.perf_counter()
    now = time.time_ns() // 1_000_000
    fingerprint = os.urandom(32)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    for start in range(0, rows, HISTORY_BATCH):
        ids = range(start, min(rows, start + HISTORY_BATCH))
        conn.executemany(
            "INSERT INTO outbox (id, network, client_message_id, request_fingerprint,"
            " destination_kind, destination_ref, priority, message, meta_json, reply_to_id,"
            " status, created_at, updated_at) VALUES (?, ?, ?, ?, 'peer', ?, 'next', ?,"
            " 'null', NULL, 'done', ?, ?)",
            (
                (f"H{i:025d}", network, f"h{i}", fingerprint, recipient, body, t, t)
                for i in ids
                for t in (now - rows + i,)
            ),
        )
        conn.executemany(
            "INSERT INTO deliveries (outbox_id, recipient, status, attempts, next_attempt_at)"
            " VALUES (?, ?, 'done', 1, ?)",
            ((f"H{i:025d}", recipient, now - rows + i) for i in ids),
        )
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - began


@contextmanager
def _daemon(home: Home) -> Iterator[int]:
    home.run("daemon", "up", "--detach", show=False)
    try:
        yield int((home.path / "daemon.pid").read_text().split()[0])
    finally:
        home.run("daemon", "down", show=False)


def _accept_round(socket: Path, pid: int, to: str, count: int) -> tuple[float, float]:
    """Accepts/s and daemon CPU µs per accept for one burst of `count` sends."""
    cpu = resources.cpu_seconds(pid)
    burst = trio.run(send_burst, socket, to, count, 1)
    return burst.per_s, (resources.cpu_seconds(pid) - cpu) * 1e6 / count


def _drain_round(conn: sqlite3.Connection, network: str, peer: str, passes: int) -> float:
    """Process CPU ms per drain pass: claim the due deliveries (up to a window), ask the next
    due time and the counts, then put the claimed ones back as a finished attempt would."""
    began = time.process_time()
    for _ in range(passes):
        now = time.time_ns() // 1_000_000
        claim = claim_due(conn, network=network, windows={peer: PEER_WINDOW}, now_ms=now)
        outbox.delivery_counts(conn)
        for delivery in claim.deliveries:
            outbox.mark_due_now(conn, delivery.outbox_id, delivery.recipient, now)
    return (time.process_time() - began) * 1000 / passes


def _pend(conn: sqlite3.Connection, network: str, peer: str) -> None:
    for i in range(PENDING):
        outbox.accept(
            conn,
            network=network,
            recipients=[peer],
            destination_kind="peer",
            destination_ref=peer,
            message="due",
            priority="next",
            meta=None,
            reply_to_id=None,
            client_message_id=f"due-{i}",
            now_ms=time.time_ns() // 1_000_000 - 1000,
        )


def measure_history(
    workdir: Path, url: str, network: str, ghost: str, body: str, sizes: HistorySizes
) -> dict[str, Any]:
    """Accept rate and drain-pass cost with 0 and `sizes.rows` rows of history."""
    homes = {0: Home("empty", workdir / "h0"), sizes.rows: Home("history", workdir / "h1")}
    written_s = 0.0
    with ExitStack() as stack:
        for rows, home in homes.items():
            daemon_up(stack, home, url)
            home.run("daemon", "down", show=False)
            if rows:
                progress(f"history: writing {rows:,} delivered sends into {home.name}'s database")
                written_s = write_history(home.path / "state.db", network, ghost, rows, body)
        pids = {rows: stack.enter_context(_daemon(home)) for rows, home in homes.items()}
        accepts: dict[int, list[tuple[float, float]]] = {rows: [] for rows in homes}
        for round_ in range(ROUNDS):
            progress(f"history: accept round {round_ + 1} of {ROUNDS}")
            for rows, home in homes.items():
                accepts[rows].append(
                    _accept_round(socket_of(home), pids[rows], ghost, sizes.accepts)
                )
    drains: dict[int, list[float]] = {rows: [] for rows in homes}
    conns = {rows: open_database(home.path / "state.db") for rows, home in homes.items()}
    try:
        peer = "bench-peer"
        for conn in conns.values():
            _pend(conn, network, peer)
        for round_ in range(ROUNDS):
            progress(f"history: drain-pass round {round_ + 1} of {ROUNDS}")
            for rows, conn in conns.items():
                drains[rows].append(_drain_round(conn, network, peer, sizes.passes))
        kept = {
            rows: conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            for rows, conn in conns.items()
        }
    finally:
        for conn in conns.values():
            conn.close()
    figures: dict[str, Any] = {"history_rows": sizes.rows, "write_s": round(written_s, 1)}
    for rows in homes:
        rates = [rate for rate, _ in accepts[rows]]
        cpu = [us for _, us in accepts[rows]]
        figures[str(rows)] = {
            "outbox_rows": kept[rows],
            "accepts_per_s": round(statistics.median(rates)),
            "daemon_cpu_us_per_accept": round(statistics.median(cpu)),
            "drain_pass_cpu_ms": round(statistics.median(drains[rows]), 3),
        }
    empty, full = figures["0"], figures[str(sizes.rows)]
    figures["ratios"] = {  # None where the empty home's figure rounds to 0 (a smoke run)
        key: round(full[key] / empty[key], 3) if empty[key] else None
        for key in ("accepts_per_s", "daemon_cpu_us_per_accept", "drain_pass_cpu_ms")
    }
    return figures


def _shown(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


def render_history(machine: dict[str, Any], figures: dict[str, Any]) -> str:
    """The "Durable messages with history" section of docs/performance.md, markers included."""
    rows = figures["history_rows"]
    empty, full, ratios = figures["0"], figures[str(rows)], figures["ratios"]
    names = {
        "accepts_per_s": "committed accepts /s (1 connection, wall clock)",
        "daemon_cpu_us_per_accept": "daemon CPU per accept, µs",
        "drain_pass_cpu_ms": "drain pass, CPU ms (claim, next due, counts, put back)",
    }
    table = "\n".join(
        f"| {name} | {empty[key]:,} | {full[key]:,} | {_shown(ratios[key])} |"
        for key, name in names.items()
    )
    measured = [ratio for ratio in ratios.values() if ratio is not None]
    within = len(measured) == len(ratios) and all(abs(r - 1) <= TARGET for r in measured)
    return f"""{DOC_BEGIN}
## Durable messages with a million rows of history

Measured by `scripts/bench_durable --history` on {machine["date"]}: {machine["nproc"]} CPUs
({machine["cpu"]}), Python {machine["python"]}, SQLite {machine["sqlite"]}, load average
{machine["load_avg_1m"]} when it began; the machine was shared with other jobs, so the CPU
figures (process CPU time, not wall time) are the robust ones. Two daemons of the same build,
one with an empty state database ({empty["outbox_rows"]:,} outbox rows at the end of the run)
and one with {rows:,} delivered sends written into it first ({full["outbox_rows"]:,} rows;
written in {figures["write_s"]} s in one transaction), measured in {ROUNDS} alternating rounds
(median). Accepts: {FULL_HISTORY.accepts:,} sends per round to a device that never comes. Drain
pass: the store work of one pass of the outbox actor over {PENDING} due deliveries to one
peer, {FULL_HISTORY.passes} passes per round, timed in-process on each file. Target: with
history within {TARGET:.0%} of without; {"met" if within else "NOT met"} in this run (a
figure too small to measure, shown `-`, does not count as met).

| figure | 0 rows | {rows:,} rows | ratio |
|---|---|---|---|
{table}
{DOC_END}"""


def main(smoke: bool, doc: Path | None) -> None:
    """Measure with a broker in a temporary directory, print the JSON, update `doc`."""
    about = machine()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp, broker(Path(tmp)) as url:
        sizes = SMOKE_HISTORY if smoke else FULL_HISTORY
        figures = measure_history(Path(tmp), url, NET, ghost_device_id(), BODY, sizes)
    print(json.dumps({"machine": about, "history": figures}, indent=2))
    if doc is not None:
        old = doc.read_text() if doc.exists() else ""
        doc.write_text(update_doc(old, render_history(about, figures), (DOC_BEGIN, DOC_END)))
        progress(f"wrote {doc}")
