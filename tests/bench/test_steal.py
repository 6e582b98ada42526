"""The bench reports how much CPU time the hypervisor gave other guests during its run."""

from __future__ import annotations

from scripts.benchlib.resources import cpu_ticks, steal_percent


def test_steal_is_the_stolen_share_of_the_time_between_two_readings() -> None:
    before = [100, 0, 50, 1000, 0, 0, 0, 5]
    after = [160, 0, 70, 1100, 0, 0, 0, 25]  # 60 + 20 + 100 + 20 stolen = 200 ticks
    assert steal_percent(before, after) == 10.0
    assert steal_percent(after, after) == 0.0


def test_this_machine_reports_eight_cpu_states() -> None:
    ticks = cpu_ticks()
    assert len(ticks) == 8
    assert sum(ticks) > 0
