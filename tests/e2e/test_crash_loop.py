"""A crash loop at the root (docs/architecture.md, "Intensity"): the root supervisor has no
parent, so once past its restart intensity `daemon up` stops with one line and exit 9, its pid
file and socket removed as on a normal stop, and a service manager starts it again."""

from __future__ import annotations

import configparser
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshactors.actors import RestartLimits
from meshactors.cli.common import EXIT_CRASH_LOOP
from meshactors.client.errors import ConnectionLost
from meshactors.client.sync import SyncClient
from tests.support import Home

pytestmark = pytest.mark.e2e

GUARD_S = 30.0  # a hang guard only: no test here bounds how fast anything is
CRASHED = "daemon/notifier"  # a root child that restarts alone (the root's last, rest_for_one)
UNITS = Path(__file__).resolve().parents[2] / "meshactors" / "units"


def state_of(client: SyncClient, path: str) -> tuple[str, int]:
    """The state and restart count of the actor at `path`, from `inspect`."""
    node = client.call("inspect")
    for name in path.split("/")[1:]:
        node = next(child for child in node["children"] if child["name"] == name)
    return node["state"], node["restarts"]


def crash_when_running(client: SyncClient, path: str, restarts: int) -> None:
    """Crash the actor at `path` as soon as `inspect` shows its restart number `restarts`
    running."""
    deadline = time.monotonic() + GUARD_S
    while state_of(client, path) != ("running", restarts):
        assert time.monotonic() < deadline, f"{path} did not run again after {restarts} restarts"
    client.call("debug_crash", path=path)


def test_past_the_roots_intensity_the_daemon_exits_9_in_one_line(
    home: Home, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager,
        stderr_path.open("w") as stderr,
    ):
        manager.bind(str(tmp_path / "notify"))  # a stand-in for systemd (Type=notify)
        manager.settimeout(GUARD_S)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "meshactors", "daemon", "up", "--debug-ops", "--log-json"],
            env=home.env | {"NOTIFY_SOCKET": str(tmp_path / "notify")},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            assert manager.recv(4096).startswith(b"READY=1\n")
            with SyncClient.connect(home.socket, timeout=GUARD_S) as client:
                for restarts in range(RestartLimits().intensity):
                    crash_when_running(client, CRASHED, restarts)
                with contextlib.suppress(ConnectionLost):  # the answer may lose to the stop
                    crash_when_running(client, CRASHED, RestartLimits().intensity)
            status = daemon.wait(GUARD_S)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(GUARD_S)
        assert status == EXIT_CRASH_LOOP
        manager.setblocking(False)  # what it sent before it exited is queued already
        stopping = manager.recv(4096).decode()
    lines = stderr_path.read_text().splitlines()
    said = [line for line in lines if not line.startswith("{")]
    assert said == [
        "meshactors: the daemon stops: more than 5 restarts in 10s under its root supervisor, "
        f"the last after {CRASHED} crashed; a service manager (Restart=on-failure) starts it again"
    ]
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    gave_up = [entry for entry in logged if entry["event"].startswith("root supervisor gave up")]
    assert [(e["level"], e["last_crashed"], e["intensity"], e["period_s"]) for e in gave_up] == [
        ("error", CRASHED, 5, 10.0)
    ]
    assert stopping.startswith("STOPPING=1\nSTATUS=the daemon stops: more than 5 restarts")
    assert not home.socket.exists()
    assert not (home.path / "daemon.pid").exists()


@pytest.mark.parametrize("unit", ["meshactors.service", "meshactors-system.service"])
def test_the_daemon_units_restart_a_daemon_that_exited_9(unit: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(UNITS / unit)
    service = parser["Service"]
    assert service["Restart"] == "on-failure"
    assert str(EXIT_CRASH_LOOP) not in service.get("RestartPreventExitStatus", "").split()
    assert str(EXIT_CRASH_LOOP) not in service.get("SuccessExitStatus", "").split()
