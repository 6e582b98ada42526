"""docs/latency.png: the RPC round-trip distributions of one bench run (mesh and stack relay as
CDFs, NATS p50/p99 as markers). Run by the bench interpreter, which has matplotlib:
`python -m scripts.benchlib.plot RESULTS.json OUT.png`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FIGURE_INCHES = (8.0, 4.5)  # width, height of the PNG
DPI = 100  # 800 x 450 pixels


def _cdf(ax: Any, samples: list[float], label: str) -> None:
    ordered = sorted(samples)
    fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
    ax.plot(ordered, fractions, label=label)


def draw(results: dict[str, Any], out: Path) -> None:
    """Plot the round-trip CDFs of `results` into `out`."""
    fig, ax = plt.subplots(figsize=FIGURE_INCHES, dpi=DPI)
    _cdf(ax, results["mesh"]["rtt_samples_us"], "meshactors RPC (client→daemon→broker→daemon)")
    _cdf(ax, results["stack_relay"]["rtt_samples_us"], "stack relay, same processes and stack")
    nats = results["nats"].get("request_reply_128")
    if nats:
        ax.scatter([nats["p50_us"], nats["p99_us"]], [0.5, 0.99], marker="x", color="black")
        ax.scatter([], [], marker="x", color="black", label="NATS request/reply p50, p99")
    ax.set_xscale("log")
    ax.set_xlabel("round trip (µs, log scale), 128 B payload")
    ax.set_ylabel("fraction of calls")
    ax.set_title(f"RPC round trips, {results['machine']['date']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
