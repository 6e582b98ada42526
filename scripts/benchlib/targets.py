"""Issue 17's speed targets: the headline figures one bench run carries at the top of
docs/bench-results.json, whether each target holds, and the table docs/performance.md shows."""

from __future__ import annotations

from typing import Any

from scripts.benchlib.meshbench import FANOUT_PEERS

MAX_RPC_P50_RATIO = 1.5  # mesh RPC round-trip p50 over the stack relay's, at most
MIN_CHANNEL_SINGLE = 50_000  # channel msgs/s, 128 B, one per request, at least
MIN_CHANNEL_BATCH = 200_000  # channel msgs/s, 128 B, with `payloads`, at least
NATS_NOT_MEASURED = "NATS not measured in this run"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The top-level keys: the figures the targets name, and `targets` saying which hold
    (None when a figure to compare with is missing, e.g. NATS not installed)."""
    mesh, relay, nats = results["mesh"], results["stack_relay"], results["nats"]
    fanout = nats.get(f"fanout_{FANOUT_PEERS}_128")
    figures: dict[str, Any] = {
        "rpc_p50_us": mesh["rtt"]["p50_us"],
        "stack_relay_p50_us": relay["rtt"]["p50_us"],
        "rpc_p50_ratio": round(mesh["rtt"]["p50_us"] / relay["rtt"]["p50_us"], 3),
        "channel_single_msgs_per_s": mesh["channel_msgs_per_s"],
        "channel_batch_msgs_per_s": mesh["channel_msgs_per_s_batched"],
        "fanout_deliveries_per_s": mesh["fanout_deliveries_per_s_batched"],
        "nats_fanout_deliveries_per_s": None if fanout is None else fanout["deliveries_per_s"],
    }
    if fanout is None:
        figures["nats_fanout_skipped"] = nats.get("skipped", NATS_NOT_MEASURED)
    nats_fanout = figures["nats_fanout_deliveries_per_s"]
    figures["targets"] = {
        "rpc_p50_ratio": _target(
            f"at most {MAX_RPC_P50_RATIO}x", figures["rpc_p50_ratio"] <= MAX_RPC_P50_RATIO
        ),
        "channel_single_msgs_per_s": _target(
            f"at least {MIN_CHANNEL_SINGLE:,}",
            figures["channel_single_msgs_per_s"] >= MIN_CHANNEL_SINGLE,
        ),
        "channel_batch_msgs_per_s": _target(
            f"at least {MIN_CHANNEL_BATCH:,}",
            figures["channel_batch_msgs_per_s"] >= MIN_CHANNEL_BATCH,
        ),
        "fanout_deliveries_per_s": _target(
            "at least NATS's",
            None if nats_fanout is None else figures["fanout_deliveries_per_s"] >= nats_fanout,
        ),
    }
    return figures


def _target(wanted: str, met: bool | None) -> dict[str, Any]:
    return {"wanted": wanted, "met": met}


def targets_table(figures: dict[str, Any]) -> str:
    """The Markdown table of the targets of `figures` (as `headline` gives them)."""
    rows = ["| target (issue 17) | wanted | this run | met |", "|---|---|---|---|"]
    names = {
        "rpc_p50_ratio": "RPC round-trip p50 ÷ stack relay's",
        "channel_single_msgs_per_s": "channel msgs/s, 128 B, one per request",
        "channel_batch_msgs_per_s": "channel msgs/s, 128 B, `payloads` batch",
        "fanout_deliveries_per_s": f"fan-out to {FANOUT_PEERS} peers, deliveries/s",
    }
    for key, target in figures["targets"].items():
        value = figures[key]
        shown = f"{value}x" if key == "rpc_p50_ratio" else f"{value:,}"
        if key == "fanout_deliveries_per_s":
            nats = figures["nats_fanout_deliveries_per_s"]
            shown += " (NATS: " + (f"{nats:,})" if nats is not None else "not measured)")
        met = {True: "yes", False: "**no**", None: "-"}[target["met"]]
        rows.append(f"| {names[key]} | {target['wanted']} | {shown} | {met} |")
    return "\n".join(rows)


def previous_design(old: dict[str, Any]) -> dict[str, Any]:
    """The same figures from a results file of the bench before issue 17, whose baseline was
    the raw relay (its `baseline` part), for the comparison table."""
    figures = headline({**old, "stack_relay": old["baseline"]})
    del figures["targets"]
    return {"date": old["machine"]["date"], **figures}


def comparison_table(now: dict[str, Any], before: dict[str, Any]) -> str:
    """Markdown: this run's figures beside the previous design's (as `previous_design` gives)."""
    names = {
        "rpc_p50_us": "RPC round-trip p50, µs",
        "stack_relay_p50_us": "the baseline's round-trip p50, µs",
        "rpc_p50_ratio": "RPC p50 ÷ the baseline's",
        "channel_single_msgs_per_s": "channel msgs/s, 128 B, one per request",
        "channel_batch_msgs_per_s": "channel msgs/s, 128 B, `payloads` batch",
        "fanout_deliveries_per_s": f"fan-out to {FANOUT_PEERS} peers, deliveries/s",
        "nats_fanout_deliveries_per_s": f"NATS fan-out to {FANOUT_PEERS}, deliveries/s",
    }
    rows = [
        f"| figure | this design (stack relay) | previous design, {before['date']} (raw relay) |",
        "|---|---|---|",
    ]
    for key, name in names.items():
        shown = ["-" if figures[key] is None else f"{figures[key]:,}" for figures in (now, before)]
        rows.append(f"| {name} | {shown[0]} | {shown[1]} |")
    return "\n".join(rows)
