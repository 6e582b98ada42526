"""A daemon that accepts connections but never answers (stopped by SIGSTOP, or stuck): the
status commands say so within their short deadline, and `daemon down` goes straight to
SIGTERM once its `shutdown` went unanswered, or, with no daemon's pid to signal, says that
what listens was not stopped. The CLI runs in-process, its deadlines lowered."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from meshactors.cli import common, daemon_cmd, main
from meshactors.cli.common import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_REFUSED, EXIT_TIMEOUT
from meshactors.paths import MAX_SOCKET_PATH_BYTES, SOCKET_PATH_FIX, resolve_paths
from tests.support import Home, answer_one_request_with, listening_unix_socket

pytestmark = pytest.mark.e2e
LOWERED_DEADLINE = 0.2  # seconds: the deadlines under test, lowered so the test waits little
EXIT_WAIT = 30.0  # seconds a continued daemon may take to act on its pending SIGTERM
ACCEPT_WAIT = 30.0  # seconds a server that hangs up waits for `daemon down` to connect


def run_cli(*words: str) -> int:
    """`meshactors WORDS…` in this process; its exit status."""
    with pytest.raises(SystemExit) as exited:
        main(list(words))
    code = exited.value.code
    assert isinstance(code, int)
    return code


@pytest.fixture
def in_home(home: Home, monkeypatch: pytest.MonkeyPatch) -> Home:
    """`home`, as the environment of the CLI run in this process."""
    for name in [name for name in os.environ if name.startswith("MESHACTORS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MESHACTORS_HOME", str(home.path))
    return home


@pytest.mark.parametrize("command", [("daemon", "status"), ("daemon", "version"), ("inspect",)])
def test_a_status_command_says_the_daemon_is_not_answering(
    in_home: Home,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: tuple[str, ...],
) -> None:
    monkeypatch.setattr(common, "STATUS_TIMEOUT", LOWERED_DEADLINE)
    with listening_unix_socket(in_home.socket):  # accepts, never answers
        status = run_cli(*command)
        (line,) = capsys.readouterr().err.strip().splitlines()
        as_json = run_cli(*command, "--json")
        error = json.loads(capsys.readouterr().out)["error"]
    op = command[-1]
    said = f"the daemon is not answering: no answer to {op} within {LOWERED_DEADLINE:g} s"
    assert status == as_json == EXIT_TIMEOUT
    assert line.startswith(f"meshactors: {said}")
    assert error["code"] == "timeout" and error["message"].startswith(said)


@contextmanager
def stopped(pid: int) -> Iterator[int]:
    """Daemon `pid` stopped by SIGSTOP; continued as the block ends. Yields a pidfd of it,
    readable once it has exited."""
    pidfd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pidfd
    finally:
        with suppress(ProcessLookupError):  # it may have exited already
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        os.close(pidfd)


def test_down_sends_sigterm_as_soon_as_shutdown_goes_unanswered(
    in_home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(daemon_cmd, "DOWN_TIMEOUT", LOWERED_DEADLINE)
    in_home.cli("daemon", "up", "--detach")
    pid = in_home.daemon_pid()
    assert pid is not None
    with stopped(pid) as pidfd:
        status = run_cli("daemon", "down")
        lines = capsys.readouterr().err.strip().splitlines()
        signal.pidfd_send_signal(pidfd, signal.SIGCONT)  # it acts on the SIGTERM left pending
        exited, _, _ = select.select([pidfd], [], [], EXIT_WAIT)
    assert status == EXIT_FAILURE  # a stopped process cannot act on SIGTERM within the wait
    assert lines == [
        f"meshactors: the daemon (pid {pid}) did not answer shutdown within "
        f"{LOWERED_DEADLINE:g} s: sending it SIGTERM",
        f"meshactors: daemon (pid {pid}) did not stop after SIGTERM",
    ]
    assert exited, "the continued daemon did not stop: it was sent no SIGTERM"
    assert in_home.daemon_pid() is None


def test_down_says_what_listens_without_a_pid_file_was_not_stopped(
    in_home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(daemon_cmd, "DOWN_TIMEOUT", LOWERED_DEADLINE)
    with listening_unix_socket(in_home.socket):  # accepts, never answers; no pid file names it
        status = run_cli("daemon", "down")
        (line,) = capsys.readouterr().err.strip().splitlines()
        as_json = run_cli("daemon", "down", "--json")
        error = json.loads(capsys.readouterr().out)["error"]
    said = (
        f"something on {in_home.socket} did not answer shutdown within {LOWERED_DEADLINE:g} s, "
        "and no pid file or state lock names a daemon: it was not stopped"
    )
    assert status == as_json == EXIT_TIMEOUT
    assert line == f"meshactors: {said}"
    assert error == {"code": "deadline", "message": said}


def test_down_says_what_hung_up_without_a_pid_file_was_not_stopped(
    in_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    with listening_unix_socket(in_home.socket) as sock:
        sock.settimeout(ACCEPT_WAIT)
        hang_up = threading.Thread(target=lambda: sock.accept()[0].close())
        hang_up.start()
        status = run_cli("daemon", "down")
        hang_up.join()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_NOT_RUNNING
    assert line == (
        f"meshactors: something on {in_home.socket} closed the connection without answering "
        "shutdown, and no pid file or state lock names a daemon: it was not stopped"
    )


@contextmanager
def pid_file_holder(home: Home) -> Iterator[subprocess.Popen[bytes]]:
    """A process holding the home's pid file lock with its pid in it, as a daemon does, till
    the block ends (it exits once its stdin closes); yielded once it holds it."""
    pid_file = resolve_paths({"MESHACTORS_HOME": str(home.path)}).pid_file
    hold = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(pid_file)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'%d\\n' % os.getpid())\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(EXIT_WAIT)


def test_down_says_at_once_what_a_daemon_refusing_shutdown_answered(
    in_home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(daemon_cmd, "DOWN_TIMEOUT", LOWERED_DEADLINE)  # what a wait would take
    error = {"code": "unavailable", "message": "busy"}
    with pid_file_holder(in_home) as holder, listening_unix_socket(in_home.socket) as sock:
        sock.settimeout(ACCEPT_WAIT)
        answering = threading.Thread(target=answer_one_request_with, args=(sock, error))
        answering.start()
        status = run_cli("daemon", "down")
        answering.join()
        signalled = holder.poll()  # a SIGTERM after a wait would have ended it
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_REFUSED
    assert lines == [
        f"meshactors: the daemon (pid {holder.pid}) answered shutdown with unavailable: busy; "
        "it was not stopped"
    ]
    assert signalled is None


def test_down_with_a_socket_path_too_long_says_so_not_that_none_runs(
    in_home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    socket_path = in_home.path / ("s" * MAX_SOCKET_PATH_BYTES)
    status = run_cli("--socket", str(socket_path), "daemon", "down")
    said = capsys.readouterr()
    as_json = run_cli("--socket", str(socket_path), "daemon", "down", "--json")
    printed = json.loads(capsys.readouterr().out)
    size = len(os.fsencode(socket_path))
    why = f"the path is {size} bytes, longer than the {MAX_SOCKET_PATH_BYTES} a Unix socket's"
    assert (status, as_json, said.out) == (EXIT_NOT_RUNNING, EXIT_NOT_RUNNING, "")
    (line,) = said.err.strip().splitlines()
    assert why in line and SOCKET_PATH_FIX in line
    assert printed["error"]["code"] == "not_running" and why in printed["error"]["message"]
