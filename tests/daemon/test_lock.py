"""The daemon lock: one holder per pid file, clean release, and recovery from a killed daemon."""

import os
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from meshactors.daemon.lock import AlreadyRunning, DaemonLock, read_running_pid

REPO_ROOT = Path(__file__).resolve().parents[2]

# A stand-in daemon: takes the lock, serves the socket, says "ready", then waits until killed.
CHILD = """
import socket, sys
from pathlib import Path
from meshactors.daemon.lock import DaemonLock
lock = DaemonLock.acquire([Path(sys.argv[1])], Path(sys.argv[2]))
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[2])
server.listen()
print("ready", flush=True)
sys.stdin.read()
"""


def leave_socket_file(path: Path) -> None:
    """Bind a real Unix socket at `path` and close it, leaving the file as a dead daemon does."""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))


def test_acquire_writes_our_pid_and_is_seen_as_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"

    with DaemonLock.acquire([pid_file], tmp_path / "daemon.sock"):
        assert pid_file.read_text() == f"{os.getpid()}\n"
        assert read_running_pid(pid_file) == os.getpid()


def test_second_acquire_raises_already_running(tmp_path: Path) -> None:
    pid_file, sock = tmp_path / "daemon.pid", tmp_path / "daemon.sock"

    with DaemonLock.acquire([pid_file], sock), pytest.raises(AlreadyRunning) as caught:
        DaemonLock.acquire([pid_file], sock)

    assert caught.value.pid == os.getpid()
    assert str(caught.value) == (
        f"a daemon is already running (pid {os.getpid()}, holding {pid_file})"
    )


def test_a_shared_state_lock_refuses_a_daemon_with_another_pid_file(tmp_path: Path) -> None:
    state_lock, sock = tmp_path / "state" / "daemon.lock", tmp_path / "daemon.sock"
    first, second = tmp_path / "r1" / "daemon.pid", tmp_path / "r2" / "daemon.pid"
    for directory in (state_lock.parent, first.parent, second.parent):
        directory.mkdir()

    with DaemonLock.acquire([first, state_lock], sock), pytest.raises(AlreadyRunning) as caught:
        DaemonLock.acquire([second, state_lock], sock)

    assert str(caught.value) == (
        f"a daemon is already running (pid {os.getpid()}, holding {state_lock})"
    )
    assert not second.exists()  # the refused daemon's own pid file is released again
    assert read_running_pid(second) is None


def test_release_unlinks_the_pid_file_and_frees_the_lock(tmp_path: Path) -> None:
    pid_file, sock = tmp_path / "daemon.pid", tmp_path / "daemon.sock"
    lock = DaemonLock.acquire([pid_file], sock)

    lock.release()
    lock.release()  # idempotent

    assert not pid_file.exists()
    assert read_running_pid(pid_file) is None
    DaemonLock.acquire([pid_file], sock).release()


def test_leftover_pid_file_is_not_running_and_is_taken_over(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    pid_file.write_text("99999999\n")

    assert read_running_pid(pid_file) is None
    with DaemonLock.acquire([pid_file], tmp_path / "daemon.sock"):
        assert pid_file.read_text() == f"{os.getpid()}\n"


def test_missing_pid_file_is_not_running(tmp_path: Path) -> None:
    assert read_running_pid(tmp_path / "daemon.pid") is None


def test_acquire_removes_a_stale_socket_file(tmp_path: Path) -> None:
    sock = tmp_path / "daemon.sock"
    leave_socket_file(sock)

    with DaemonLock.acquire([tmp_path / "daemon.pid"], sock):
        assert not sock.exists()


def test_acquire_leaves_a_regular_file_at_the_socket_path(tmp_path: Path) -> None:
    not_a_socket = tmp_path / "notes.txt"
    not_a_socket.write_text("keep me")

    with DaemonLock.acquire([tmp_path / "daemon.pid"], not_a_socket):
        assert not_a_socket.read_text() == "keep me"


def test_release_keeps_a_pid_file_that_replaced_ours(tmp_path: Path) -> None:
    pid_file, sock = tmp_path / "daemon.pid", tmp_path / "daemon.sock"
    old = DaemonLock.acquire([pid_file], sock)
    pid_file.unlink()  # someone removed it by hand; a new daemon started
    new = DaemonLock.acquire([pid_file], sock)

    old.release()

    assert pid_file.read_text() == f"{os.getpid()}\n"
    new.release()
    assert not pid_file.exists()


async def test_killed_daemon_is_recovered_from(tmp_path: Path) -> None:
    pid_file, sock = tmp_path / "daemon.pid", tmp_path / "daemon.sock"
    run_child = partial(
        trio.run_process,
        [sys.executable, "-c", CHILD, str(pid_file), str(sock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:  # run_process reaps the child and its pipes
            child: trio.Process = await nursery.start(run_child)
            assert child.stdout is not None
            output = b""
            while not output.endswith(b"\n"):
                chunk = await child.stdout.receive_some()
                assert chunk, "the child exited before taking the lock"
                output += chunk
            assert output == b"ready\n"
            assert read_running_pid(pid_file) == child.pid
            with pytest.raises(AlreadyRunning) as caught:
                DaemonLock.acquire([pid_file], sock)
            assert caught.value.pid == child.pid
            child.kill()

    assert child.returncode == -signal.SIGKILL
    assert sock.exists() and pid_file.exists()  # what a killed daemon leaves behind
    assert read_running_pid(pid_file) is None
    with DaemonLock.acquire([pid_file], sock):
        assert not sock.exists()
        assert pid_file.read_text() == f"{os.getpid()}\n"
