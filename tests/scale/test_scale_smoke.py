"""CI smoke of scripts/scale: the same measurements at tiny sizes, each yielding its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.benchlib import closedscale, resources, statescale, swarmscale

pytestmark = pytest.mark.e2e


def test_per_client_rss_and_status_round_trips() -> None:
    report = resources.per_client([0, 5])
    assert report["rows"][1]["clients"] == 5
    assert report["rows"][1]["failed_clients"] == 0
    assert report["rows"][1]["status_rtt"]["samples"] == 5


def test_swarm_of_host_processes_forms_and_measures_messages(tmp_path: Path) -> None:
    figures = swarmscale.measure_swarm(tmp_path, 3, 2, 0.2, 10)
    assert figures["formed"] is True
    assert figures["active_sessions"] == figures["sessions_wanted"] == 6
    assert figures["hosts"] == 3
    assert figures["directed"]["rtt"]["samples"] == 10
    assert figures["broker_errors"] == 0


def test_directed_message_with_several_networks_joined(tmp_path: Path) -> None:
    figures = swarmscale.measure_networks(tmp_path, 2, 0.2, 10)
    assert figures["networks"] == 2
    assert figures["directed"]["rtt"]["samples"] == 10


def test_replicated_state_reaches_a_late_joiner() -> None:
    figures = statescale.late_joiner(20)
    assert figures["keys"] == 20
    assert figures["join_to_all_keys_s"] >= figures["active_to_all_keys_s"] >= 0


def test_an_eviction_reaches_every_member_of_a_closed_network(tmp_path: Path) -> None:
    figures = closedscale.measure_eviction(tmp_path, 3)
    assert figures["members"] == 3
    assert figures["reached"] == 2  # the other member and the evicted device itself
