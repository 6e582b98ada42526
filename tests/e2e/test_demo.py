"""The README's first command runs green and leaves nothing running."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def processes_marked(marker: str) -> list[int]:
    """Pids whose environment carries `marker` (the demo's children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


def test_demo_runs_green_and_cleans_up() -> None:
    marker = f"DEMO_TEST_MARK={uuid.uuid4()}"
    name, _, value = marker.partition("=")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo")],
        env=os.environ | {name: value},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for shown in [
        '{"n": 3}',
        '"retained": true',
        "sent while bob was away",
        "1/1 delivered",
        "phase stopped: this device was evicted from the closed network",
    ]:
        assert shown in result.stdout
    assert processes_marked(marker) == []
