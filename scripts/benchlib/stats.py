"""Small statistics for benchmark reports."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of `samples`, by nearest rank."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    """p50, p99 and mean of round-trip samples, in microseconds."""
    return {
        "p50_us": round(percentile(samples_s, 0.50) * 1e6, 1),
        "p99_us": round(percentile(samples_s, 0.99) * 1e6, 1),
        "mean_us": round(statistics.fmean(samples_s) * 1e6, 1),
        "samples": len(samples_s),
    }
