"""Cold start (docs/performance.md, "Cold start"): READY=1 means the control socket answers, and
it does not wait for a network to join; the requests right after READY work, including the
ops whose params converters are generated on first use."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshactors.client.errors import ClientError
from meshactors.client.sync import SyncClient
from tests.support import Home

pytestmark = pytest.mark.e2e

GUARD_S = 30.0  # a hang guard only: no test here bounds how fast anything is
UPGRADE_END = b"\r\n\r\n"  # the end of the link's HTTP upgrade request


@contextmanager
def foreground_daemon(home: Home, tmp_path: Path) -> Iterator[None]:
    """`daemon up` under a stand-in for systemd; returns once its READY=1 arrived, SIGTERM and
    wait afterwards."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        manager.settimeout(GUARD_S)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "meshactors", "daemon", "up"],
            env=home.env | {"NOTIFY_SOCKET": str(tmp_path / "notify")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert manager.recv(4096).startswith(b"READY=1\n")
            yield
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(GUARD_S)


def test_ready_does_not_wait_for_a_broker_that_never_answers(home: Home, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as broker:
        broker.bind(("127.0.0.1", 0))  # bound, not yet listening: the first daemon is refused
        url = f"ws://127.0.0.1:{broker.getsockname()[1]}/v1"
        home.cli("daemon", "up", "--detach")
        home.cli("network", "add", "far", "--broker", url)
        home.cli("daemon", "down")
        broker.listen()  # from now on it accepts, reads, and never answers the upgrade
        broker.settimeout(GUARD_S)

        with foreground_daemon(home, tmp_path):
            with SyncClient.connect(home.socket, timeout=GUARD_S) as client:
                status = client.call("status")
            assert [(n["id"], n["phase"]) for n in status["networks"]] == [("far", "connecting")]
            attempt, _ = broker.accept()
            with attempt:
                attempt.settimeout(GUARD_S)
                request = b""
                while UPGRADE_END not in request:
                    request += attempt.recv(4096)
                assert request.startswith(b"GET /v1 ")
                attempt.setblocking(False)
                with pytest.raises(BlockingIOError):  # the attempt is still open, unanswered:
                    attempt.recv(1)  # READY and status came before the network joined


def test_the_first_requests_after_ready_are_answered(home: Home, tmp_path: Path) -> None:
    with (
        foreground_daemon(home, tmp_path),
        SyncClient.connect(home.socket, timeout=GUARD_S) as client,
    ):
        with pytest.raises(ClientError) as bad:
            client.call("network_add", config={"id": "x", "brokers": "not a list"})
        added = client.call(
            "network_add", config={"id": "near", "brokers": ["ws://127.0.0.1:9/v1"]}
        )
        status = client.call("status")
    assert bad.value.code == "invalid_params"
    assert added["added"] is True
    assert [n["id"] for n in status["networks"]] == ["near"]


def test_the_daemons_modules_leave_what_only_a_joined_network_needs_unloaded() -> None:
    deferred = ("meshactors.network.network", "trio_websocket", "meshactors.broker.server")
    probe = "import sys, meshactors.cli, meshactors.daemon.main\n"
    probe += f"print([m for m in {deferred!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=GUARD_S
    )
    assert loaded.stdout.strip() == "[]"
