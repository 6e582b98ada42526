"""A daemon whose listen queue is full runs, too busy to take one more connection: the CLI
retries it for SYNC_CONNECT_TIMEOUT and then says it is busy (exit 7, `unavailable`), never
that no daemon runs and to start one; `daemon down` never takes it for no daemon running."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from meshactors.cli.common import EXIT_OK, EXIT_REFUSED
from meshactors.client.sync import SYNC_CONNECT_TIMEOUT
from meshactors.paths import resolve_paths
from tests.client.test_full_listen_queue import full_queue
from tests.support import Home

HOLDER_WAIT = 30.0  # seconds the lock holder may take to lock, and to end once signalled
# a stand-in daemon: it holds the pid file's lock, as a live daemon does, until SIGTERM ends it
HOLD_THE_LOCK = """
import signal, sys
from pathlib import Path
from meshactors.daemon.lock import DaemonLock
DaemonLock.acquire([Path(sys.argv[1])], Path(sys.argv[2]), keep_socket=True)
print("locked", flush=True)
signal.pause()
"""


def test_a_command_on_a_daemon_too_busy_for_a_connection_says_it_is_busy(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path)
    with full_queue(home.socket):
        result = home.cli("daemon", "status", check=False)
    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "daemon busy:" in result.stderr and "listen queue is full" in result.stderr
    assert "start one" not in result.stderr


def test_down_on_a_busy_socket_no_lock_names_says_so_and_stops_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path)
    with full_queue(home.socket):
        result = home.cli("daemon", "down", check=False)
    assert result.returncode == EXIT_REFUSED, result.stdout
    assert f"something on {home.socket} took no connection within" in result.stderr
    assert "it was not stopped" in result.stderr


def test_down_on_a_busy_daemon_sends_it_sigterm_saying_why(tmp_path: Path) -> None:
    home = Home(tmp_path)
    paths = resolve_paths(env=home.env)
    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(paths.pid_file), str(home.socket)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with full_queue(home.socket):
            result = home.cli("daemon", "down", check=False)
        assert holder.wait(HOLDER_WAIT) == -signal.SIGTERM
    finally:
        holder.kill()
        holder.wait(HOLDER_WAIT)
    assert result.returncode == EXIT_OK, result.stderr
    assert (
        f"the daemon (pid {holder.pid}) took no connection within {SYNC_CONNECT_TIMEOUT:g} s "
        "(its listen queue is full): sending it SIGTERM"
    ) in result.stderr
