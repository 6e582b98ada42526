"""The wall clock in milliseconds, the one time stamp other processes and restarts read back."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the Unix epoch: what rows, events, facts and hellos are stamped with
    (trio's clock is for timeouts; it means nothing to another process)."""
    return time.time_ns() // 1_000_000
