"""Real daemon processes started from the CLI in temporary homes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshactors.client import SyncClient
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


@pytest.fixture
def me(home: Home) -> Iterator[str]:
    """A running daemon in `home` joined to `lan` (whose broker never answers); its device id."""
    home.cli("daemon", "up", "--detach")
    home.cli("network", "add", "lan", "--broker", "ws://127.0.0.1:9/v1")
    with SyncClient.connect(home.socket) as client:
        yield client.call("status")["device_id"]
