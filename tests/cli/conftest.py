"""The commands that follow a daemon's output run against a real daemon tree
(tests/daemon_tree.py); tests/conftest.py resets the structlog their `main` configures."""

from __future__ import annotations

from tests.daemon_tree import daemon

__all__ = ["daemon"]
