"""The paired round-trip measure: real processes (a broker, two daemons, an echo client, the
four relay processes), both chains measured in turns, the same number of samples kept each."""

from __future__ import annotations

import pytest

from scripts.benchlib.rpcpair import BLOCKS, measure_rpc


@pytest.mark.e2e
def test_mesh_and_relay_round_trips_are_both_measured_and_kept_alike() -> None:
    figures = measure_rpc(count=90, size=128)
    mesh, relay = figures["mesh"], figures["relay"]
    assert len(mesh["rtt_samples_us"]) == len(relay["rtt_samples_us"]) == 9 * BLOCKS
    assert mesh["rtt"]["samples"] == relay["rtt"]["samples"] == 9 * BLOCKS
    for side in (mesh, relay):
        assert 0 < side["rtt"]["p50_us"] <= side["rtt"]["p99_us"]
        assert all(sample > 0 for sample in side["rtt_samples_us"])
