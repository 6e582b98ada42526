"""The cold start measure (scripts/benchlib/coldstart.py) runs real `daemon up` processes and
yields a figure; how large it is is the benchmark's business, not a test's."""

from __future__ import annotations

import pytest

from scripts.benchlib import coldstart


@pytest.mark.e2e
def test_cold_start_is_measured_from_real_ready_notifications() -> None:
    figures = coldstart.measure(2)

    assert figures["runs"] == len(figures["samples_ms"]) == 2
    assert all(sample > 0 for sample in figures["samples_ms"])
    assert figures["p50_ms"] in figures["samples_ms"]
    assert figures["max_ms"] == max(figures["samples_ms"])
