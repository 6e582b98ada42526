"""open_database: pragmas, migrations, refusing damaged files untouched, OS errors; immediate()."""

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from meshactors.paths import temp_name
from meshactors.store import db
from meshactors.store.db import MIGRATIONS, StoreError, immediate, open_database


def test_open_sets_pragmas_and_schema_version(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY: savepoint journals
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.isolation_level is None


def test_reopen_keeps_data_and_does_not_reapply_migrations(db_path: Path) -> None:
    first = open_database(db_path)
    first.execute("INSERT INTO networks VALUES ('n1', '{}', 1)")
    first.close()
    second = open_database(db_path)
    assert second.execute("SELECT id FROM networks").fetchall() == [("n1",)]
    second.close()


def test_only_missing_migrations_are_applied(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_database(db_path).close()
    extra = ("CREATE TABLE later (x INTEGER)", "INSERT INTO later VALUES (7)")
    monkeypatch.setattr(db, "MIGRATIONS", (*MIGRATIONS, extra))
    conn = open_database(db_path)  # re-running migration 1 would fail: its tables exist
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    assert conn.execute("SELECT x FROM later").fetchall() == [(7,)]
    conn.close()


def test_failed_migration_leaves_nothing_behind(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_database(db_path).close()
    broken = ("CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr(db, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError):
        open_database(db_path)
    monkeypatch.setattr(db, "MIGRATIONS", MIGRATIONS)
    conn = open_database(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    conn.close()


def test_newer_schema_is_refused_untouched(db_path: Path) -> None:
    open_database(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    raw.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="newer") as info:
        open_database(db_path)
    assert str(db_path) in str(info.value)
    assert db_path.read_bytes() == before


def test_garbage_file_raises_and_stays_byte_identical(db_path: Path) -> None:
    garbage = os.urandom(8192)
    db_path.write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        open_database(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert "left untouched" in message
    assert db_path.read_bytes() == garbage


def test_corrupt_pages_behind_a_valid_header_are_refused_untouched(db_path: Path) -> None:
    conn = open_database(db_path)
    conn.executemany(
        "INSERT INTO inbox VALUES (NULL, 'n', 's', ?, ?, 'null', 'next', NULL, 0, 0)",
        [(str(i), "x" * 500) for i in range(200)],
    )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    damaged = bytearray(db_path.read_bytes())
    page_size = 4096
    damaged[page_size : 4 * page_size] = os.urandom(3 * page_size)
    db_path.write_bytes(bytes(damaged))
    with pytest.raises(StoreError, match="left untouched"):
        open_database(db_path)
    assert db_path.read_bytes() == bytes(damaged)


def test_an_empty_file_is_refused_and_stays_empty(db_path: Path) -> None:
    open_database(db_path).close()
    db_path.write_bytes(b"")  # truncated: opened as is, it would be a new, empty database
    with pytest.raises(StoreError, match="left untouched") as info:
        open_database(db_path)
    assert "empty" in str(info.value)
    assert db_path.read_bytes() == b""


def test_a_new_database_takes_its_name_only_once_made(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a crash part way through the first open would leave it: no state.db, no stray file.
    monkeypatch.setattr(db, "MIGRATIONS", (*MIGRATIONS, ("THIS IS NOT SQL",)))
    with pytest.raises(StoreError) as info:
        open_database(db_path)
    assert str(db_path) in str(info.value)
    assert list(db_path.parent.iterdir()) == []
    monkeypatch.setattr(db, "MIGRATIONS", MIGRATIONS)
    conn = open_database(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert sorted(path.name for path in db_path.parent.iterdir()) == [db_path.name]


def test_what_a_crash_left_of_a_new_database_is_removed_at_the_next_open(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    db_path = home / "state.db"
    open_database(db_path).close()
    linked = home / f".{db_path.name}.{'a' * 16}.tmp"  # crashed just after the link
    os.link(db_path, linked)
    unlinked = home / f".{db_path.name}.{'b' * 16}.tmp"  # crashed before it: a WAL beside
    for name in ("", "-wal", "-shm", "-journal"):
        unlinked.with_name(unlinked.name + name).write_bytes(b"private")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not ours")
    (home / f".{db_path.name}.{'c' * 16}.tmp").symlink_to(outside)  # removed, not followed
    temp_name(db_path).write_bytes(b"private")  # the name _create makes, whatever its rule
    kept = [f".{db_path.name}.{'d' * 16}.tmp", f".{db_path.name}.backup", "other.db"]
    (home / kept[0]).mkdir()  # not a file a crash left
    for name in kept[1:]:
        (home / name).write_bytes(b"the user's")
    assert db_path.stat().st_nlink == 2
    open_database(db_path).close()
    assert db_path.stat().st_nlink == 1
    assert sorted(path.name for path in home.iterdir()) == sorted([db_path.name, *kept])
    assert outside.read_bytes() == b"not ours"


def test_a_wal_file_without_its_database_is_refused_untouched(db_path: Path) -> None:
    conn = open_database(db_path)
    conn.execute("INSERT INTO networks VALUES ('n1', '{}', 1)")
    wal = db_path.with_name(db_path.name + "-wal")
    left = wal.read_bytes()  # as the old database's WAL, had it been deleted without it
    conn.close()
    db_path.unlink()
    wal.write_bytes(left)
    with pytest.raises(StoreError, match="WAL file") as info:
        open_database(db_path)
    assert "left untouched" in str(info.value)
    assert not db_path.exists()
    assert wal.read_bytes() == left


def test_missing_directory_reports_the_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "state.db"
    with pytest.raises(StoreError, match="No such file or directory") as info:
        open_database(path)
    assert str(path) in str(info.value)


def test_parent_that_is_a_file_reports_the_os_reason(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    with pytest.raises(StoreError, match="Not a directory"):
        open_database(tmp_path / "plain" / "state.db")


def test_immediate_commits_on_success(conn: sqlite3.Connection) -> None:
    with immediate(conn):
        conn.execute("INSERT INTO networks VALUES ('a', '{}', 1)")
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM networks").fetchone()[0] == 1


def test_immediate_rolls_back_on_error(conn: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError), immediate(conn):
        conn.execute("INSERT INTO networks VALUES ('a', '{}', 1)")
        raise RuntimeError("boom")
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM networks").fetchone()[0] == 0


def test_a_sqlite_older_than_the_store_needs_is_refused_with_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(StoreError, match=r"SQLite 3\.31\.1 is too old: the store needs 3\.35\.0"):
        open_database(tmp_path / "state.db")
    assert not (tmp_path / "state.db").exists()  # nothing made
