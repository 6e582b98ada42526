"""Real daemon processes started from the CLI in temporary homes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from meshactors.daemon.lock import read_running_pid

CLI_TIMEOUT = 60  # seconds any one CLI command may take


@attrs.frozen
class Home:
    """One MESHACTORS_HOME and a way to run the CLI against it."""

    path: Path

    @property
    def socket(self) -> Path:
        return self.path / "daemon.sock"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHACTORS_")}
        return env | {"MESHACTORS_HOME": str(self.path)}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `meshactors ARGS…` to completion."""
        result = subprocess.run(
            [sys.executable, "-m", "meshactors", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"meshactors {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start `meshactors ARGS…` in the background."""
        return subprocess.Popen(
            [sys.executable, "-m", "meshactors", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def daemon_pid(self) -> int | None:
        return read_running_pid(self.path / "daemon.pid")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A temporary home; whatever daemon it started is stopped afterwards."""
    home = Home(tmp_path)
    yield home
    pid = home.daemon_pid()
    if pid is not None:
        home.cli("daemon", "down", check=False)
        if home.daemon_pid() is not None:
            os.kill(pid, 9)
