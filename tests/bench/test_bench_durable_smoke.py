"""The durable-messages benchmark: its doc section replaces only its own markers, and a smoke
run against real processes measures every figure and writes the section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.benchlib.durable import (
    DOC_BEGIN,
    DOC_END,
    ROOT,
    BenchError,
    update_doc,
    write_headline,
)
from scripts.benchlib.durable_history import render_history

SMOKE_TIMEOUT = 60  # seconds the smoke run may take (it takes about 11 s)
SECTION = f"{DOC_BEGIN}\n## Durable messages\nnew\n{DOC_END}"


def test_the_section_between_the_markers_is_replaced_and_the_rest_kept() -> None:
    old = f"# Performance\n\n## Relay\nfast\n\n{DOC_BEGIN}\nold figures\n{DOC_END}\n\n## Later\nx\n"
    assert update_doc(old, SECTION) == (
        f"# Performance\n\n## Relay\nfast\n\n{SECTION}\n\n## Later\nx\n"
    )


def test_a_file_without_markers_gets_the_section_appended() -> None:
    assert update_doc("# Performance\n\n## Relay\n", SECTION) == (
        f"# Performance\n\n## Relay\n\n{SECTION}\n"
    )


def test_a_missing_file_gets_a_title_and_the_section() -> None:
    assert update_doc("", SECTION) == f"# Performance\n\n{SECTION}\n"


@pytest.mark.parametrize("text", [f"a\n{DOC_BEGIN}\nb\n", f"a\n{DOC_END}\n{DOC_BEGIN}\n"])
def test_half_marked_files_are_refused_untouched(text: str) -> None:
    with pytest.raises(BenchError, match="must both appear"):
        update_doc(text, SECTION)


def test_the_headline_figures_are_set_at_the_top_level_and_other_keys_kept(
    tmp_path: Path,
) -> None:
    results = tmp_path / "bench-results.json"
    results.write_text(json.dumps({"mesh": {"x": 1}, "durable_accepts_ratio": 0.1}))
    write_headline(results, {"durable_accepts_ratio": 0.6, "durable_delivery_msgs_per_s": 6000})
    assert json.loads(results.read_text()) == {
        "mesh": {"x": 1},
        "durable_accepts_ratio": 0.6,
        "durable_delivery_msgs_per_s": 6000,
    }
    results.write_text("[]")
    with pytest.raises(BenchError, match="left untouched"):
        write_headline(results, {"durable_accepts_ratio": 0.6})
    assert results.read_text() == "[]"


def bench_durable(*args: str) -> Any:
    """Run `scripts/bench_durable ARGS` as CI would; its JSON report."""
    result = subprocess.run(
        [sys.executable, "-m", "scripts.benchlib.durable", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.e2e
def test_a_smoke_run_measures_every_figure_and_writes_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Relay\nkept\n")
    results = tmp_path / "bench-results.json"
    results.write_text('{"kept": true}')
    report = bench_durable("--smoke", "--doc", str(doc), "--results", str(results))
    baseline = report["baseline_rows_per_s"]
    assert baseline > 0
    figures = [
        *report["accepts_per_s"].values(),
        *report["online"].values(),
        *report["offline"].values(),
    ]
    assert len(report["accepts_per_s"]) == len(report["sizes"]["connections"])
    for figure in figures:
        assert figure["value"] > 0
        assert figure["ratio"] == pytest.approx(figure["value"] / baseline, abs=0.01)
    assert report["drain_first_message_s"] > 0
    text = doc.read_text()
    assert text.startswith("# Performance\n\n## Relay\nkept\n\n")
    assert text.count(DOC_BEGIN) == text.count(DOC_END) == 1
    assert f"| {baseline:,} /s | 1.000 |" in text
    assert report["machine"]["python"] in text
    assert json.loads(results.read_text()) == {
        "kept": True,
        "durable_accepts_ratio": report["accepts_per_s"]["16"]["ratio"],
        "durable_delivery_msgs_per_s": report["online"]["delivered_per_s"]["value"],
    }
    assert "`durable_accepts_ratio`" in text


@pytest.mark.e2e
def test_a_history_smoke_run_measures_both_sizes_and_writes_only_its_section(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\n{SECTION}\n")
    figures = bench_durable("--history", "--smoke", "--doc", str(doc))["history"]
    rows = figures["history_rows"]
    assert figures[str(rows)]["outbox_rows"] == figures["0"]["outbox_rows"] + rows  # all kept
    for size in ("0", str(rows)):
        assert figures[size]["accepts_per_s"] > 0 and figures[size]["drain_pass_cpu_ms"] > 0
    text = doc.read_text()
    assert SECTION in text and "## Durable messages with a million rows of history" in text


def test_a_history_figure_too_small_to_measure_shows_a_dash_and_is_not_met() -> None:
    sizes = {"outbox_rows": 10, "accepts_per_s": 5000, "drain_pass_cpu_ms": 1.0}
    figures = {
        "history_rows": 2000,
        "write_s": 0.1,
        "0": {**sizes, "daemon_cpu_us_per_accept": 0},  # under one clock tick in a smoke run
        "2000": {**sizes, "daemon_cpu_us_per_accept": 90},
        "ratios": {
            "accepts_per_s": 1.0,
            "daemon_cpu_us_per_accept": None,
            "drain_pass_cpu_ms": 1.0,
        },
    }
    machine = {"date": "d", "nproc": 2, "cpu": "c", "python": "3", "sqlite": "3", "load_avg_1m": 0}
    text = render_history(machine, figures)
    assert "| daemon CPU per accept, µs | 0 | 90 | - |" in text
    assert "NOT met in this run" in text
