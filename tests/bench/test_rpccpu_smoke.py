"""The round trip's CPU by process: both chains stand up, every process of each is found by
its role and charged the CPU it spent in its own chain's blocks."""

from __future__ import annotations

import pytest
import trio

from scripts.benchlib.rpccpu import BLOCKS, CLIENT_A, hand_offs, measure_cpu, report

ROLES = {"daemon A", "daemon B", "broker", "client B (echo)", CLIENT_A}


@pytest.mark.e2e
def test_every_process_of_both_chains_is_charged_its_cpu() -> None:
    figures = measure_cpu(count=10 * BLOCKS)
    for chain in figures.values():
        assert chain.round_trips == 10 * BLOCKS
        assert set(chain.cpu_us) == ROLES
        assert all(cpu > 0 for cpu in chain.cpu_us.values())
        assert chain.p50_us > 0
    table = report(figures)
    assert all(f"| {name} |" in table for name in ROLES)


def test_the_hand_off_measure_passes_every_message_along() -> None:
    assert trio.run(hand_offs, 3, 50) > 0  # it returns only once all 50 came back
