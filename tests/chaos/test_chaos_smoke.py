"""CI smoke of scripts/chaos: the quick scenarios at smoke sizes, through the same registry."""

from __future__ import annotations

import pytest

from meshactors.network import peers
from scripts.benchlib.chaos import SCENARIOS, run_scenario

pytestmark = pytest.mark.e2e


def test_corrupt_database_refused_and_untouched() -> None:
    verdict = run_scenario(SCENARIOS["corrupt_database"], smoke=True)
    assert verdict.status == "PASS", verdict.line()
    assert "identical True" in verdict.figures["garbage"]


def test_slow_reader_leaves_the_others_alone() -> None:
    """The other client is answered throughout, the stalled one is told `lagged` and memory
    stays bounded; its latency is only reported here (scripts/chaos bounds it)."""
    verdict = run_scenario(SCENARIOS["slow_reader"], smoke=True)
    assert verdict.status == "PASS", verdict.line()
    assert verdict.figures["status_during"]["samples"] > 0
    assert verdict.figures["lagged_skipped"] > 0
    assert "not applied at smoke size" in verdict.detail


def test_broker_restart_daemons_come_back_by_themselves() -> None:
    verdict = run_scenario(SCENARIOS["broker_restart"], smoke=True)
    assert verdict.status == "PASS", verdict.line()
    assert len(verdict.figures["reconnect_s"]) == 4


def test_broker_restart_waits_on_the_phase_not_on_its_paced_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Phase events past a pace of two that never refills: the mesh forming spends both, so
    the outage's `degraded` and the return to `active` are never told; the scenario still sees
    each phase (status shows it at once), where waiting for their events hung."""
    monkeypatch.setattr(peers, "PHASE_EVENT_BURST", 2)
    monkeypatch.setattr(peers, "STATUS_EVENT_INTERVAL", 3600.0)
    verdict = run_scenario(SCENARIOS["broker_restart"], smoke=True)
    assert verdict.status == "PASS", verdict.line()
    assert len(verdict.figures["reconnect_s"]) == 4


def test_sigkill_mid_drain_loses_and_duplicates_nothing() -> None:
    verdict = run_scenario(SCENARIOS["sigkill_mid_drain"], smoke=True)
    assert verdict.status == "PASS", verdict.line()
    assert verdict.figures["inbox"] == verdict.figures["distinct"] == 100
    assert verdict.figures["received_at_kill"] < 100


def test_broker_restart_under_rpc_stream_fails_clearly_then_resumes() -> None:
    verdict = run_scenario(SCENARIOS["broker_restart_under_rpc_stream"], smoke=True)
    assert verdict.status == "PASS", verdict.line()
    assert verdict.figures["error_code"] == "peer_not_active"
    assert verdict.figures["stream_after_restart"] is True


def test_full_state_refuses_writes_keeps_the_daemon_and_delivers_after() -> None:
    verdict = run_scenario(SCENARIOS["full_state"], smoke=True)
    if verdict.status == "SKIP":  # mounting a tmpfs needs root
        pytest.skip(verdict.detail)
    assert verdict.status == "PASS", verdict.line()
    assert (verdict.figures["outbox_restarts"], verdict.figures["codes"]) == (0, ["storage"])
