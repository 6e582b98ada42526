"""The commands that follow a daemon's output run against a real daemon tree
(tests/daemon_tree.py). The CLI's `main` run in this process configures structlog for the
whole process: each test here leaves structlog's defaults behind for the tests that follow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.daemon_tree import daemon

__all__ = ["daemon"]


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()
