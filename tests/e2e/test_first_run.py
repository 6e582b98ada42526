"""The first run of scripts/demo (through scripts/_venv.sh) says what it is installing before
the silent minute of pip, and does not repeat it once installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Stands in for python3 and pip: installing for real needs the network and a minute.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
echo "$@" >> "$(dirname "$0")/calls"
"""


def run_venv(checkout: Path, python: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "_venv.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_first_run_says_what_it_installs_and_later_runs_are_quiet(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "_venv.sh", checkout / "scripts")
    shutil.copy(ROOT / "pyproject.toml", checkout)
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    first = run_venv(checkout, python)
    assert "making a virtual environment in" in first.stderr
    assert "installing meshactors[test] (editable) and its dependencies" in first.stderr
    assert "pip install --quiet -e" in (checkout / ".venv" / "bin" / "calls").read_text()
    assert run_venv(checkout, python).stderr == ""
