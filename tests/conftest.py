"""Fixtures for every test: the CLI's `main` run in this process (by tests in several
directories) configures structlog for the whole process, filtering out debug lines; each test
leaves structlog's defaults behind, so a test that reads captured log lines sees them all
whatever ran before it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()
