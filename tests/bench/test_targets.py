"""The bench's headline figures (scripts/benchlib/targets.py): the keys issue 17 names at the
top of docs/bench-results.json, and which targets hold."""

from __future__ import annotations

from typing import Any

from scripts.benchlib.targets import headline, targets_table


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
