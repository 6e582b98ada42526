"""Fixtures for the store tests: a real database file per test."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshactors.store.db import open_database


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's state database lives."""
    return tmp_path / "state.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    """An open, migrated state database in tmp_path."""
    connection = open_database(db_path)
    yield connection
    connection.close()
