"""CI smoke of scripts/scale: the same measurements at tiny sizes, each yielding its figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from scripts.benchlib import resources, swarm

pytestmark = pytest.mark.e2e


def test_per_client_rss_and_status_round_trips() -> None:
    report = resources.per_client([0, 5])
    assert report["rows"][1]["clients"] == 5
    assert report["rows"][1]["failed_clients"] == 0
    assert report["rows"][1]["status_rtt"]["samples"] == 5


def test_swarm_forms_and_counts_deliveries(tmp_path: Path) -> None:
    figures = trio.run(swarm.measure_swarm, tmp_path, 3, 2, 0.1)
    assert figures["daemons"] == 3
    assert figures["cpu_us_per_delivery"] > 0
