"""CI smoke of scripts/scale: the same measurements at tiny sizes, each yielding its figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.benchlib import closedscale, resources, statescale, swarmcluster, swarmscale
from scripts.benchlib.redisserver import redis_server_path

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


def test_cluster_section_measures_pairs_and_a_swarm_across_brokers(tmp_path: Path) -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    figures = swarmcluster.measure_cluster(tmp_path, 3, 0.2, 10, 50)
    for pair in ("standalone", "same_broker", "different_brokers"):
        assert figures[pair]["directed"]["rtt"]["samples"] == 10
        assert figures[pair]["channel_msgs_per_s"] > 0
        assert figures[pair]["broker_errors"] == 0
    assert figures["different_brokers"]["brokers"] == [0, 1]
    swarm = figures["swarm"]
    assert swarm["formed"] is True and swarm["brokers"] == 3
    assert swarm["form_routed_frames"] > 0 and swarm["broker_errors"] == 0
