"""Every shell and Python snippet of README.md and docs/client.md runs as written against a
real daemon, without a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meshactors.daemon.lock import read_running_pid
from tests.support import Home

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/client.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SNIPPET_TIMEOUT = 120  # seconds one snippet may take
NETWORKS = ("home", "lan")  # what the Python snippets expect joined (their broker never answers)
MARKS = {"upper": "HI"}  # a snippet that mentions the key must print the value


def snippets() -> list[pytest.ParameterSet]:
    """(document, index, language, code) of each block to run. The README's first block
    (`scripts/demo`, `scripts/test`) has tests of its own: test_demo.py and CI itself."""
    found = []
    for document in DOCUMENTS:
        blocks = FENCE.findall((ROOT / document).read_text(encoding="utf-8"))
        for index, (language, code) in enumerate(blocks):
            if all(line.startswith("scripts/") for line in code.splitlines()):
                continue
            assert language in ("sh", "python"), f"{document} block {index}: {language!r}"
            found.append(pytest.param(document, index, language, code, id=f"{document}:{index}"))
    return found


def run_script(
    home: Home, bin_dir: Path, language: str, code: str
) -> subprocess.CompletedProcess[str]:
    """Run a snippet in the home (TMPDIR too, for its own `mktemp -d`), `meshactors` on PATH."""
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code]
        if language == "sh"
        else [sys.executable, "-c", code],
        cwd=home.path,
        env=home.env | {"PATH": path, "TMPDIR": str(home.path)},
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT,
        check=False,
    )


def stop_every_daemon_under(directory: Path) -> None:
    for pid_file in directory.rglob("daemon.pid"):
        if read_running_pid(pid_file) is not None:
            Home(pid_file.parent).stop_daemon()


@pytest.mark.parametrize(("document", "index", "language", "code"), snippets())
def test_snippet_runs_as_written(
    tmp_path: Path, document: str, index: int, language: str, code: str
) -> None:
    bin_dir = tmp_path / "bin"  # `meshactors` on PATH, as `pip install .` or .venv/bin put it
    bin_dir.mkdir()
    shim = bin_dir / "meshactors"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m meshactors "$@"\n')
    shim.chmod(0o755)
    home = Home(tmp_path / "home")
    home.path.mkdir()
    try:
        if language == "python":
            home.cli("daemon", "up", "--detach")
            for network in NETWORKS:
                home.cli("network", "add", network, "--broker", "ws://127.0.0.1:9/v1")
        done = run_script(home, bin_dir, language, code)
    finally:
        stop_every_daemon_under(tmp_path)
    assert done.returncode == 0, f"{document} block {index}:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    for mark, printed in MARKS.items():
        assert mark not in code or printed in done.stdout
