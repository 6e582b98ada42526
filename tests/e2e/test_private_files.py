"""Files the daemon keeps in its home are never followed through a symlink: a link is refused
with one line and exit 3, and the file it points at (outside the home) keeps its mode."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from tests.support import Home, obeying_file_modes

pytestmark = pytest.mark.e2e

OUTSIDE_MODE = 0o644

# name in the home -> the `daemon up` arguments that make the daemon open it
PRIVATE_FILES = {
    "identity.json": (),
    "host.json": (),
    "http-token": ("--tcp", "FREE_PORT"),
    "state.db": (),
    "state.db-wal": (),
    "state.db-shm": (),
    "daemon.pid": (),
    "daemon.lock": (),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def outside_target(tmp_path: Path) -> Path:
    target = tmp_path / "outside" / "precious"
    target.parent.mkdir()
    target.write_text("not the daemon's\n")
    target.chmod(OUTSIDE_MODE)
    return target


@pytest.mark.parametrize("name", sorted(PRIVATE_FILES))
def test_a_symlinked_private_file_is_refused_and_its_target_untouched(
    home: Home, tmp_path: Path, name: str
) -> None:
    if name not in ("identity.json", "host.json"):
        home.cli("identity", "show")  # the identity and host record exist: the link is next
        home.cli("daemon", "accept-host", check=False)
    target = outside_target(tmp_path)
    link = home.path / name
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    args = [str(free_port()) if arg == "FREE_PORT" else arg for arg in PRIVATE_FILES[name]]
    result = home.cli("daemon", "up", *args, check=False)
    as_json = home.cli("daemon", "up", "--json", *args, check=False)
    was_link = link.is_symlink()
    link.unlink()  # the fixture's clean-up reads daemon.pid
    assert result.returncode == as_json.returncode == 3, result.stderr
    assert "symlink" in result.stderr and str(link) in result.stderr
    assert json.loads(as_json.stdout)["error"]["code"] == "symlink_refused", as_json.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == OUTSIDE_MODE
    assert target.read_text() == "not the daemon's\n"
    assert was_link


FIFO_BOUND = 20  # seconds: a refusal takes about one CLI start; a FIFO opened blocking, forever

# name in the home -> the command that reads it, its exit code, what its line says of the file
FIFO_READERS = {
    "identity.json": (("identity", "show"), 3, "identity file"),
    "daemon.toml": (("config", "show"), 3, ""),
    "host.json": (("daemon", "up"), 3, "host record"),
    "http-token": (("daemon", "up", "--tcp", "FREE_PORT"), 3, "the daemon could not start"),
    "daemon.pid": (("daemon", "up"), 3, "cannot take the daemon lock"),
    "daemon.log": (("daemon", "up", "--detach"), 3, ""),
}


@pytest.mark.parametrize("name", sorted(FIFO_READERS))
def test_a_fifo_in_place_of_a_home_file_is_refused_at_once(home: Home, name: str) -> None:
    if name != "identity.json":
        home.cli("identity", "show")
    if name not in ("identity.json", "host.json"):
        home.cli("daemon", "accept-host")
    command, status, says = FIFO_READERS[name]
    args = [str(free_port()) if arg == "FREE_PORT" else arg for arg in command]
    fifo = home.path / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)
    try:
        result = home.cli(*args, check=False, timeout=FIFO_BOUND)
    finally:
        fifo.unlink()  # the fixture's clean-up reads daemon.pid
    assert result.returncode == status, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"meshactors: {says}")
    assert str(fifo) in line and "not a regular file" in line


def test_a_directory_in_place_of_the_log_stops_a_detached_start_in_one_line(home: Home) -> None:
    home.cli("identity", "show")
    log_dir = home.path / "daemon.log"
    log_dir.mkdir()
    result = home.cli("daemon", "up", "--detach", check=False)
    as_json = home.cli("daemon", "up", "--detach", "--json", check=False)
    assert result.returncode == as_json.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"meshactors: {log_dir} is a directory, not a regular file"
    assert json.loads(as_json.stdout)["error"]["code"] == "startup", as_json.stdout
    assert home.daemon_pid() is None


def test_a_detached_daemon_reports_the_childs_own_reason(home: Home, tmp_path: Path) -> None:
    home.cli("identity", "show")
    link = home.path / "state.db"
    link.symlink_to(outside_target(tmp_path))
    for _ in range(5):  # the parent once polled a child that had not exited yet: no race now
        result = home.cli("daemon", "up", "--detach", check=False)
        assert result.returncode == 3, result.stderr
        assert "symlink" in result.stderr, result.stderr
        assert "did not become ready" not in result.stderr
    logged = [json.loads(line) for line in (home.path / "daemon.log").read_text().splitlines()]
    failures = [event for event in logged if event["event"] == "command_failed"]
    assert [(event["level"], event["code"]) for event in failures] == [
        ("error", "symlink_refused")
    ] * 5


def test_the_log_and_lock_files_are_private(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    try:
        kept = ("daemon.log", "daemon.pid", "daemon.lock", "state.db", "identity.json", "host.json")
        for name in kept:
            mode = stat.S_IMODE(os.lstat(home.path / name).st_mode)
            assert mode == 0o600, (name, oct(mode))
    finally:
        home.stop_daemon()


@pytest.mark.parametrize("command", [("daemon", "down"), ("daemon", "up", "--detach")])
def test_an_unreadable_pid_file_is_one_line_and_exit_3(
    home: Home, command: tuple[str, ...]
) -> None:
    home.cli("identity", "show")
    pid_file = home.path / "daemon.pid"
    pid_file.write_text("12345\n")  # as a `sudo meshactors daemon up` leaves it: root's own
    pid_file.chmod(0)

    result = home.cli(*command, check=False, preexec_fn=obeying_file_modes)

    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"meshactors: cannot read the daemon's pid file {pid_file}: Permission denied"


def test_a_mode_tightened_before_any_command_is_said_on_stderr_not_in_the_output(
    home: Home,
) -> None:
    home.cli("identity", "show")
    (home.path / "identity.json").chmod(0o644)
    shown = home.cli("identity", "show", "--json")
    assert set(json.loads(shown.stdout)) == {"device_id", "label"}
    (line,) = shown.stderr.splitlines()  # stderr is no terminal: a JSON line
    assert json.loads(line)["event"] == "private_file_mode_tightened"
    assert stat.S_IMODE((home.path / "identity.json").stat().st_mode) == 0o600


FOREIGN_UID = 1000  # the owner of files another user planted in a home once open to them

# name in the home -> the command that opens it, and its code under --json
FOREIGN_FILE_OPENERS = {
    "identity.json": (("identity", "show"), "foreign_file"),
    "host.json": (("daemon", "up"), "foreign_file"),
    "http-token": (("daemon", "up", "--tcp", "FREE_PORT"), "foreign_file"),
    "state.db": (("daemon", "up"), "foreign_file"),
    "state.db-wal": (("daemon", "up"), "foreign_file"),
    "state.db-shm": (("daemon", "up"), "foreign_file"),
    "daemon.pid": (("daemon", "up"), "foreign_file"),
    "daemon.lock": (("daemon", "up"), "foreign_file"),
    "daemon.log": (("daemon", "up", "--detach"), "foreign_file"),
    "daemon.toml": (("daemon", "up"), "bad_config"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN_FILE_OPENERS))
def test_a_home_file_another_user_owns_is_refused_in_one_line(home: Home, name: str) -> None:
    """Run as root (`sudo meshactors daemon up`), a file uid 1000 left is neither read nor used."""
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    if name != "identity.json":
        home.cli("identity", "show")
    if name not in ("identity.json", "host.json"):
        home.cli("daemon", "accept-host")
    command, code = FOREIGN_FILE_OPENERS[name]
    args = [str(free_port()) if arg == "FREE_PORT" else arg for arg in command]
    planted = home.path / name
    planted.unlink(missing_ok=True)
    planted.write_text("debug_ops = true\n" if name == "daemon.toml" else "planted\n")
    os.chown(planted, FOREIGN_UID, FOREIGN_UID)
    try:
        result = home.cli(*args, check=False)
        as_json = home.cli(*args, "--json", check=False)
    finally:
        planted.unlink()  # the fixture's clean-up reads daemon.pid
    assert result.returncode == as_json.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(planted) in line and f"belongs to uid {FOREIGN_UID}, not to us" in line, line
    assert json.loads(as_json.stdout)["error"]["code"] == code, as_json.stdout
    assert home.daemon_pid() is None
