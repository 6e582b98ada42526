"""Real daemon processes started from the CLI in temporary homes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Home


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A temporary home; whatever daemon it started is stopped afterwards."""
    home = Home(tmp_path)
    yield home
    home.stop_daemon()


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[tuple[Home, Home]]:
    """Two temporary homes, a and b; their daemons are told to stop afterwards."""
    a, b = Home(tmp_path / "a"), Home(tmp_path / "b")
    for home in (a, b):
        home.path.mkdir()
    yield a, b
    for home in (a, b):
        home.cli("daemon", "down", check=False)
