"""The control socket's tests run against a real daemon tree (tests/daemon_tree.py)."""

from __future__ import annotations

from tests.daemon_tree import connect, daemon, http

__all__ = ["connect", "daemon", "http"]
