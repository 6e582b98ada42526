"""CI smoke of `scripts/chaos --soak`: a few seconds of the mixed load with both faults."""

from __future__ import annotations

import pytest

from scripts.benchlib.soak import run_soak

pytestmark = pytest.mark.e2e

MINUTES = 0.2  # 12 s of load: the broker kill at 40 %, the daemon restart at 55 %


def test_a_short_soak_delivers_every_durable_message_once_through_both_faults() -> None:
    verdict = run_soak(MINUTES)
    assert verdict.status == "PASS", verdict.line()
    durable = verdict.figures["durable"]
    assert durable["exactly_once"] and durable["stored"] == durable["sent"] > 0
    assert verdict.figures["faults"] == [
        "broker SIGKILLed at 0.1 min",
        "daemon b restarted at 0.1 min",
    ]
    assert verdict.figures["minutes_table"], "no per-interval figures"
