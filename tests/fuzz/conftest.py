"""Fuzzing profile: a short run by default (CI), FUZZ_EXAMPLES=N for the long one (scripts/fuzz)."""

from __future__ import annotations

import os
from typing import TypeVar

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import SearchStrategy

from tests.daemon_tree import connect, daemon
from tests.network.conftest import mesh

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

settings.register_profile(
    "fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
fuzz = settings.get_profile("fuzz")

T = TypeVar("T")


async def examples_of(strategy: SearchStrategy[T]) -> list[T]:
    """FUZZ_EXAMPLES values of `strategy`, for a test that sends them to a live daemon
    (hypothesis cannot drive a socket itself). Drawn in a worker thread: drawing 20,000 takes
    about a minute, and in the test's own thread it would freeze the daemon under test, whose
    asks in flight would then all time out at once."""
    drawn: list[T] = []

    @fuzz
    @given(strategy)
    def record(value: T) -> None:
        drawn.append(value)

    await trio.to_thread.run_sync(record)
    return drawn


__all__ = ["connect", "daemon", "examples_of", "fuzz", "mesh"]
