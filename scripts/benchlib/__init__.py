"""Benchmark helpers run by hand from scripts/bench*: baselines, process control, statistics."""
