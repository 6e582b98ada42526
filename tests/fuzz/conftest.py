"""Fuzzing profile: a short run by default (CI), FUZZ_EXAMPLES=N for the long one (scripts/fuzz)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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

__all__ = ["connect", "daemon", "fuzz", "mesh"]
