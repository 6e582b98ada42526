"""Open the state database (WAL, checked, migrated) and run explicit write transactions on it."""

import contextlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from meshactors.paths import (
    TMP_SUFFIX_BYTES,
    RefusedFile,
    fsync_directory,
    open_private,
    refuse_unsafe,
    temp_name,
    tighten_mode,
)

BUSY_TIMEOUT_MS = 5000  # how long a writer waits for another connection's lock before failing
PROBE_BYTES = 64 * 1024  # written beside the database to learn why the OS refuses it


def _counted(table: str, status: str) -> tuple[str, ...]:
    """Statements that fill row_counts for `table` by its `status` expression and keep it
    current with triggers, so counts are read in O(1) instead of by scanning the table.
    Migration 3 is built from it: never change what it returns (append a migration)."""
    new, old = status.replace("status", "NEW.status"), status.replace("status", "OLD.status")
    bump = (
        "INSERT INTO row_counts (tbl, status, n) VALUES ('{t}', {s}, {d})"
        " ON CONFLICT (tbl, status) DO UPDATE SET n = n + {d}"
    )
    statements = [
        f"INSERT INTO row_counts (tbl, status, n) SELECT '{table}', {status}, count(*)"
        f" FROM {table} GROUP BY 1, 2",
        f"CREATE TRIGGER {table}_counted_insert AFTER INSERT ON {table} BEGIN "
        + bump.format(t=table, s=new, d=1)
        + "; END",
        f"CREATE TRIGGER {table}_counted_delete AFTER DELETE ON {table} BEGIN "
        + bump.format(t=table, s=old, d=-1)
        + "; END",
    ]
    if status == "status":
        statements.append(
            f"CREATE TRIGGER {table}_counted_update AFTER UPDATE OF status ON {table}"
            " WHEN OLD.status != NEW.status BEGIN "
            + bump.format(t=table, s=old, d=-1)
            + "; "
            + bump.format(t=table, s=new, d=1)
            + "; END"
        )
    return tuple(statements)


# Schema migrations, applied in order; PRAGMA user_version counts the ones already applied.
# Never edit a released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE networks (
            id TEXT PRIMARY KEY,
            config_json TEXT NOT NULL,
            added_at INTEGER NOT NULL
        )""",
        """CREATE TABLE roster (
            network TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
            device_id TEXT NOT NULL,
            label TEXT,
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (network, device_id)
        )""",
        """CREATE TABLE local_settings (
            network TEXT NOT NULL,
            key TEXT NOT NULL,
            value_json TEXT NOT NULL,
            PRIMARY KEY (network, key)
        )""",
        """CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            network TEXT NOT NULL,
            client_message_id TEXT NOT NULL,
            request_fingerprint BLOB NOT NULL,
            destination_kind TEXT NOT NULL CHECK (destination_kind IN ('peer', 'all', 'tag')),
            destination_ref TEXT NOT NULL,
            priority TEXT NOT NULL CHECK (priority IN ('now', 'next', 'low')),
            message TEXT NOT NULL,
            meta_json TEXT NOT NULL,
            reply_to_id TEXT,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'inflight', 'done', 'dead', 'aborted')),
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            last_error TEXT,
            superseded_by TEXT,
            UNIQUE (network, client_message_id)
        )""",
        "CREATE INDEX outbox_by_status ON outbox (status, created_at)",
        """CREATE TABLE deliveries (
            outbox_id TEXT NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
            recipient TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'inflight', 'done', 'dead')),
            attempts INTEGER NOT NULL,
            next_attempt_at INTEGER NOT NULL,
            last_error TEXT,
            PRIMARY KEY (outbox_id, recipient)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending'",
        "CREATE INDEX deliveries_inflight ON deliveries (outbox_id) WHERE status = 'inflight'",
        """CREATE TABLE inbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            network TEXT NOT NULL,
            sender TEXT NOT NULL,
            client_message_id TEXT NOT NULL,
            message TEXT NOT NULL,
            meta_json TEXT NOT NULL,
            priority TEXT NOT NULL,
            reply_to_id TEXT,
            sent_at INTEGER NOT NULL,
            received_at INTEGER NOT NULL,
            UNIQUE (network, sender, client_message_id)
        )""",
        """CREATE TABLE events (
            event_id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            data_json TEXT NOT NULL,
            at_ms INTEGER NOT NULL
        )""",
    ),
    # 2: the roster outlives its networks row (kept for a rejoin, gone only with a purge) and
    # keeps the role each device announced.
    (
        """CREATE TABLE roster_v2 (
            network TEXT NOT NULL,
            device_id TEXT NOT NULL,
            label TEXT,
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
            updated_at INTEGER NOT NULL,
            role TEXT,
            PRIMARY KEY (network, device_id)
        )""",
        """INSERT INTO roster_v2 (network, device_id, label, state, updated_at)
            SELECT network, device_id, label, state, updated_at FROM roster""",
        "DROP TABLE roster",
        "ALTER TABLE roster_v2 RENAME TO roster",
    ),
    # 3: hot-path indexes bounded by the work due, and row counts kept by triggers (issue 22)
    (
        "CREATE INDEX deliveries_pending ON deliveries (recipient, next_attempt_at)"
        " WHERE status = 'pending'",
        "DROP INDEX outbox_by_status",
        "CREATE INDEX outbox_by_status ON outbox (status, created_at, id)",
        "CREATE INDEX outbox_recent ON outbox (created_at, id)",
        """CREATE TABLE row_counts (
            tbl TEXT NOT NULL,
            status TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (tbl, status)
        ) WITHOUT ROWID""",
        *(
            statement
            for table, status in (("outbox", "status"), ("deliveries", "status"), ("inbox", "''"))
            for statement in _counted(table, status)
        ),
    ),
    # 4: each pending delivery's place in its peer's queue (priority rank, then the row id, a
    # ULID in time order), so a claim reads only the deliveries it takes (issue 19)
    (
        "ALTER TABLE deliveries ADD COLUMN rank INTEGER NOT NULL DEFAULT 1",
        "UPDATE deliveries SET rank = (SELECT CASE o.priority WHEN 'now' THEN 0"
        " WHEN 'next' THEN 1 ELSE 2 END FROM outbox o WHERE o.id = outbox_id)"
        " WHERE status IN ('pending', 'inflight')",
        "CREATE INDEX deliveries_queue ON deliveries (recipient, rank, outbox_id)"
        " WHERE status = 'pending'",
    ),
    # 5: the replicated state map of each network, one row per key, tombstones included (issue 20)
    (
        """CREATE TABLE netstate (
            network TEXT NOT NULL,
            key TEXT NOT NULL,
            value_json TEXT NOT NULL,
            deleted INTEGER NOT NULL CHECK (deleted IN (0, 1)),
            wall INTEGER NOT NULL,
            counter INTEGER NOT NULL,
            author TEXT NOT NULL,
            PRIMARY KEY (network, key)
        ) WITHOUT ROWID""",
    ),
    # 6: closed networks' membership logs: the genesis and the accepted facts, in the order
    # they were accepted (parents first), each as its signed JSON (issue 20)
    (
        """CREATE TABLE membership_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            network TEXT NOT NULL,
            hash TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('genesis', 'fact')),
            record_json TEXT NOT NULL,
            UNIQUE (network, hash)
        )""",
    ),
    # 7: the outbox and its deliveries are counted by the code that changes them (a batch
    # bumps each count once, store.db.bump_counts), not by triggers: a trigger runs per row,
    # six of them in a durable send's life (issue 19). The inbox keeps its triggers.
    tuple(
        f"DROP TRIGGER {table}_counted_{event}"
        for table in ("outbox", "deliveries")
        for event in ("insert", "delete", "update")
    ),
    # 8: the key a requeued send goes out under: the first send's, so a recipient that stored
    # a copy whose ack was lost dedupes the requeue (NULL: the row's own client_message_id);
    # a new send looks it up too, as a key still taken once the first row is gone
    (
        "ALTER TABLE outbox ADD COLUMN origin_client_message_id TEXT",
        "CREATE INDEX outbox_by_origin ON outbox (network, origin_client_message_id)"
        " WHERE origin_client_message_id IS NOT NULL",
    ),
    # 9: a death (expiry, evict, abort) committed and its `message_dead` not yet logged, so a
    # stop (or a kill) between the two leaves it to be told at the outbox's next start
    (
        "ALTER TABLE deliveries ADD COLUMN untold INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX deliveries_untold ON deliveries (outbox_id, recipient) WHERE untold = 1",
    ),
)

_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


MIN_SQLITE = (3, 35, 0)  # RETURNING (the inbox's insert), the newest feature the store uses


class StoreError(Exception):
    """The state database cannot be used: damaged, foreign, too new, or refused by the OS."""


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if absent) and migrate the state database at `path`.

    The parent directory must exist. A new database is made whole before it takes the name
    (`_create`; what a crash left of one is removed first), so an existing file is never one
    this code left half made: it is checked before anything is written to it, an empty,
    damaged or foreign file raises StoreError and is never overwritten or repaired, and a
    symlink in the place of any of its files, or one another user owns, raises RefusedFile.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        wanted = ".".join(map(str, MIN_SQLITE))
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} is too old: the store needs {wanted} or newer "
            "(RETURNING); use a Python built with a newer SQLite"
        )
    _remove_stray_temps(path)
    if not _existing(path):  # RefusedFile, as for every file of the home
        _create(path)
    return _open(path, path)


def _remove_stray_temps(path: Path) -> None:
    """Delete what a `_create` cut short by a crash left beside `path`: its temporary database
    (named by `temp_name`; after the link, a second name of `path` that would keep its data
    once `path` is deleted) and the WAL, SHM and journal files of it. No other `_create` can
    be running: only the daemon holding the home's pid lock opens its database. A symlink is
    removed, never followed; a directory of that name is left alone."""
    stray = re.compile(
        rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * TMP_SUFFIX_BYTES}}}\.tmp(-wal|-shm|-journal)?"
    )
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return  # the open that follows reports why
    for entry in entries:
        if stray.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)


def _open(path: Path, shown: Path) -> sqlite3.Connection:
    """Connect to the database file at `path`, check it, set the pragmas and migrate it;
    errors name `shown` (the state database a temporary file is made for)."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _refused(shown, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _check_integrity(conn, shown)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Every grouped store call is a savepoint, whose undo journal would otherwise be a
        # temporary file: in memory, an accept costs ~62 us, not ~87.
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, shown)
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        if exc.sqlite_errorcode & 0xFF in _CORRUPTION_CODES:
            raise _damaged(shown, str(exc)) from exc
        raise _refused(shown, exc) from exc
    return conn


def _existing(path: Path) -> bool:
    """Whether the database file exists; refuse it, or its WAL or SHM file, as a symlink or
    another user's (RefusedFile), and
    an empty one (`_create` never leaves one: it was truncated, and opening it would start a
    new database in its place); drop any mode beyond 0600. What the OS refuses otherwise is
    left for SQLite's own open to report."""
    for each in _files(path):
        refuse_unsafe(each)
    try:
        fd = open_private(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except RefusedFile:
        raise
    except OSError:
        return True
    try:
        if os.fstat(fd).st_size == 0:
            raise _damaged(path, "the file is empty")
        tighten_mode(fd, path)
    finally:
        os.close(fd)
    return True


def _create(path: Path) -> None:
    """Make a new database: migrated under a temporary name beside `path` (0600), synced,
    then linked into place, so a crash leaves a stray temporary file (the next open removes
    it), never an empty or half made `path`. A database another process linked there first
    is kept; a WAL file left without its database is refused."""
    wal = _files(path)[1]
    if os.path.lexists(wal):  # SQLite would replay its pages onto the new database
        raise StoreError(
            f"state database {path} is missing but its WAL file {wal} is there; both were"
            " left untouched: restore the database, or move the WAL file aside to start anew"
        )
    made = temp_name(path)
    try:
        try:
            fd = open_private(made, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except OSError as exc:
            raise StoreError(f"cannot use state database {path}: {exc.strerror or exc}") from exc
        try:
            _open(made, path).close()  # the last connection: its WAL is checkpointed, removed
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(made, path)
        fsync_directory(path.parent)
    finally:
        for each in _files(made):
            each.unlink(missing_ok=True)


def _files(path: Path) -> tuple[Path, Path, Path]:
    """The database file at `path` and the WAL and SHM files SQLite keeps beside it."""
    return path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one BEGIN IMMEDIATE transaction: COMMIT on success, ROLLBACK on error.

    IMMEDIATE takes the write lock up front, so concurrent writers queue on busy_timeout
    instead of failing halfway through a read-then-write. Inside a transaction already open
    the block joins it, and its failure is undone by what owns that transaction: the store
    actor's group commit runs each call in a savepoint of its own. A savepoint per block
    would copy every page the block touches to the statement journal (a third of a durable
    accept's cost), so a caller that catches a block's failure and goes on relies on the
    block refusing before it writes (as `store.outbox.accept_many` does).
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def to_json(value: Any) -> str:
    """Compact JSON text for a JSON column (most sends have no meta: no encoder for None)."""
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def from_json(text: str) -> Any:
    """The value stored in a JSON column."""
    return json.loads(text)


def checked_limit(limit: int, maximum: int) -> int:
    """A page size from 1 to `maximum`, so no call reads an unbounded result; one beyond is
    refused (ValueError, answered `invalid_params`) rather than quietly lowered."""
    if not 1 <= limit <= maximum:
        raise ValueError(f"limit must be 1-{maximum}, got {limit}")
    return limit


def row_counts(conn: sqlite3.Connection, table: str, statuses: tuple[str, ...]) -> dict[str, int]:
    """How many rows of `table` are in each status, from row_counts (kept by the inbox's
    triggers and by the outbox's own writes, `bump_counts`)."""
    counts = dict.fromkeys(statuses, 0)
    for status, n in conn.execute("SELECT status, n FROM row_counts WHERE tbl = ?", (table,)):
        if status in counts:
            counts[status] = n
    return counts


def bump_counts(conn: sqlite3.Connection, changes: Mapping[tuple[str, str], int]) -> None:
    """Add `changes` ((table, status) → rows gained, negative for rows lost) to row_counts in
    one statement however many rows a batch moved; call it inside the writes it counts."""
    conn.executemany(
        "INSERT INTO row_counts (tbl, status, n) VALUES (?, ?, ?)"
        " ON CONFLICT (tbl, status) DO UPDATE SET n = n + excluded.n",
        [(table, status, n) for (table, status), n in changes.items() if n],
    )


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Run PRAGMA quick_check before the first write so a damaged file is refused untouched."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise _damaged(path, "; ".join(problems[:3]))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations this file lacks, all in one transaction."""
    with immediate(conn):
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state database {path} has schema version {version}, newer than this "
                f"meshactors understands ({len(MIGRATIONS)}); it was left untouched"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


MAX_DAMAGE_DETAIL = 200  # characters of SQLite's own words kept in the message, on one line


def _damaged(path: Path, detail: str) -> StoreError:
    detail = " ".join(detail.split())[:MAX_DAMAGE_DETAIL]
    return StoreError(
        f"state database {path} is damaged or not a SQLite database ({detail}); "
        "it was left untouched: move it aside or restore a backup"
    )


def _refused(path: Path, exc: sqlite3.Error) -> StoreError:
    reason = _os_reason(path) or str(exc)
    return StoreError(f"cannot use state database {path}: {reason}")


def _os_reason(path: Path) -> str | None:
    """Why the OS refuses the database, in its own words: reopen the file, write beside it."""
    try:
        if path.exists():
            os.close(open_private(path, os.O_RDWR))
        with tempfile.TemporaryFile(dir=path.parent) as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
