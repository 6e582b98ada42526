"""`scripts/bench --smoke`: the benchmark harness runs end to end with tiny counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = ROOT / "docs" / "bench-results-before-issue-17.json"  # the last run before issue 17


def test_the_benchmark_smoke_run_measures_both_sides_and_the_previous_design_beside(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.json"
    doc_before = (ROOT / "docs" / "performance.md").read_text()
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench"),
            "--smoke",
            "--out",
            str(out),
            "--previous",
            str(PREVIOUS),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, f"scripts/bench --smoke failed:\n{run.stderr[-4000:]}"
    results = json.loads(out.read_text())
    assert results["mesh"]["rtt"]["samples"] > 0
    assert results["mesh"]["channel_msgs_per_s"] > 0
    assert results["mesh"]["channel_msgs_per_s_batched"] > 0
    assert results["mesh"]["stream_mb_per_s"] > 0
    assert results["mesh"]["channel_16k_msgs_per_s"] > 0
    assert results["mesh"]["fanout_deliveries_per_s_batched"] > 0
    assert results["stack_relay"]["one_way_msgs_per_s"] > 0
    assert results["stack_relay"]["one_way_16k_mb_per_s"] > 0
    assert results["rpc_p50_us"] == results["mesh"]["rtt"]["p50_us"]
    assert results["stack_relay_p50_us"] == results["stack_relay"]["rtt"]["p50_us"]
    assert results["rpc_p50_ratio"] > 0
    assert results["channel_single_msgs_per_s"] == results["mesh"]["channel_msgs_per_s"]
    assert results["channel_batch_msgs_per_s"] == results["mesh"]["channel_msgs_per_s_batched"]
    assert results["fanout_deliveries_per_s"] > 0
    assert results["nats_fanout_deliveries_per_s"] is None  # NATS is not run in --smoke
    assert results["nats_fanout_skipped"] == results["nats"]["skipped"]
    assert results["previous_design"]["rpc_p50_us"] == 1030.0  # as that file has it
    assert results["cold_start_p50_ms"] > 0  # at the top level, as issue 19 names it
    assert results["binary_stream_mb_per_s"] > 0  # likewise, beside its ceiling
    assert results["websocket_ceiling_mb_per_s"] > 0
    for part in ("nats", "durable", "resources"):  # CI needs no nats-server nor matplotlib
        assert "skipped" in results[part]
    assert (ROOT / "docs" / "performance.md").read_text() == doc_before
