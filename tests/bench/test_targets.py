"""The bench's headline figures (scripts/benchlib/targets.py): the keys issue 17 names at the
top of docs/bench-results.json, and which targets hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.benchlib.targets import comparison_table, headline, previous_design, targets_table

PREVIOUS = Path(__file__).resolve().parents[2] / "docs" / "bench-results-before-issue-17.json"


def _results(*, nats: dict[str, Any]) -> dict[str, Any]:
    return {
        "mesh": {
            "rtt": {"p50_us": 1200.0},
            "channel_msgs_per_s": 60_000,
            "channel_msgs_per_s_batched": 150_000,
            "fanout_deliveries_per_s_batched": 300_000,
        },
        "stack_relay": {"rtt": {"p50_us": 1000.0}},
        "nats": nats,
    }


def test_the_figures_and_which_targets_hold() -> None:
    figures = headline(_results(nats={"fanout_3_128": {"deliveries_per_s": 400_000}}))
    assert figures["rpc_p50_us"] == 1200.0
    assert figures["stack_relay_p50_us"] == 1000.0
    assert figures["rpc_p50_ratio"] == 1.2
    assert figures["channel_single_msgs_per_s"] == 60_000
    assert figures["channel_batch_msgs_per_s"] == 150_000
    assert figures["fanout_deliveries_per_s"] == 300_000
    assert figures["nats_fanout_deliveries_per_s"] == 400_000
    met = {key: target["met"] for key, target in figures["targets"].items()}
    assert met == {
        "rpc_p50_ratio": True,
        "channel_single_msgs_per_s": True,
        "channel_batch_msgs_per_s": False,
        "fanout_deliveries_per_s": False,
    }
    assert (
        "| fan-out to 3 peers, deliveries/s | at least NATS's | 300,000 (NATS: 400,000) | **no** |"
        in (targets_table(figures))
    )


def test_without_nats_its_figure_is_null_with_the_reason() -> None:
    figures = headline(_results(nats={"skipped": "nats-server not installed; skipped"}))
    assert figures["nats_fanout_deliveries_per_s"] is None
    assert figures["nats_fanout_skipped"] == "nats-server not installed; skipped"
    assert figures["targets"]["fanout_deliveries_per_s"]["met"] is None


def test_the_previous_designs_figures_come_from_its_own_results_file() -> None:
    old = json.loads(PREVIOUS.read_text())  # the last full run before issue 17
    before = previous_design(old)
    assert before["date"] == old["machine"]["date"]
    assert before["rpc_p50_us"] == old["mesh"]["rtt"]["p50_us"]
    assert before["stack_relay_p50_us"] == old["baseline"]["rtt"]["p50_us"]  # the raw relay
    assert before["channel_batch_msgs_per_s"] == old["mesh"]["channel_msgs_per_s_batched"]
    assert before["nats_fanout_deliveries_per_s"] == old["nats"]["fanout_3_128"]["deliveries_per_s"]
    now = headline(_results(nats={"skipped": "not measured in --smoke"}))
    table = comparison_table(now, before)
    single = old["mesh"]["channel_msgs_per_s"]
    assert f"| channel msgs/s, 128 B, one per request | 60,000 | {single:,} |" in table
    assert "| NATS fan-out to 3, deliveries/s | - |" in table
