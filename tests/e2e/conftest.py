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
