"""The daemon as a user runs it: CLI processes, the real socket, signals, the host guard."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.cli.common import EXIT_INTERRUPTED, EXIT_NOT_RUNNING
from meshactors.daemon.lock import read_running_pid
from meshactors.hostguard import HostFacts, accept_host
from tests.support import Home, LineClient, obeying_file_modes

pytestmark = pytest.mark.e2e
DOWN_BEFORE_POLL_S = 8.0  # a `down` that cannot ask must not first wait out its 10 s poll
START_GATE = Path(__file__).parent / "start_gate"  # its sitecustomize holds a process at start
ERROR_INTERRUPTED = {"code": "interrupted", "message": "interrupted"}  # `--json`'s, for Ctrl-C


def client_names(tree: dict[str, object]) -> set[str]:
    control = next(c for c in tree["children"] if c["name"] == "control")  # type: ignore[attr-defined]
    return {c["name"] for c in control["children"] if c["kind"] == "client"}


async def test_up_serve_frames_inspect_and_down(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    assert home.daemon_pid() is not None
    status = json.loads(home.cli("daemon", "status", "--json").stdout)
    assert status["socket"] == str(home.socket)

    with trio.fail_after(30):
        client = LineClient(await trio.open_unix_socket(str(home.socket)))
        await client.send_raw(b"this is not json\n")
        assert (await client.frame())["error"]["code"] == "bad_json"
        await client.send_raw(b'{"id":1,"op":"status","surprise":true}\n')
        assert (await client.frame())["error"]["code"] == "invalid_params"
        first, second = await client.send("inspect"), await client.send("status")
        answers = {(await client.frame())["id"], (await client.frame())["id"]}
        assert answers == {first, second}

        tree = json.loads(home.cli("inspect", "--json").stdout)
        own_id = (await client.call("status"))["data"]["client_id"]
        assert f"client {own_id}" in client_names(tree)
        await client.aclose()

    tree = json.loads(home.cli("inspect", "--json").stdout)
    assert f"client {own_id}" not in client_names(tree)
    assert "store" in home.cli("inspect").stdout

    home.cli("daemon", "down")
    assert home.daemon_pid() is None
    assert not home.socket.exists()
    assert home.cli("daemon", "status", check=False).returncode == EXIT_NOT_RUNNING


def test_second_up_says_already_running(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    again = home.cli("daemon", "up", "--detach", check=False)
    assert again.returncode == 1
    assert "already running" in again.stderr


def test_already_running_names_the_running_daemon_not_the_socket_asked_for(home: Home) -> None:
    alt = str(home.path / "alt.sock")
    home.cli("--socket", alt, "daemon", "up", "--detach")
    pid = home.daemon_pid()
    for up in (("daemon", "up", "--detach"), ("daemon", "up")):
        again = home.cli(*up, check=False)
        assert again.returncode == 1
        assert f"already running (pid {pid}, holding {home.path / 'daemon.pid'})" in again.stderr
        assert str(home.socket) not in again.stderr  # it serves alt.sock, not the default
    home.cli("--socket", alt, "daemon", "down")


def test_one_daemon_per_state_directory_whatever_runtime_directory(tmp_path: Path) -> None:
    """A user unit's XDG_RUNTIME_DIR and a sudo shell's /tmp fallback resolve different pid
    files: the state directory's lock still refuses a second daemon of the same identity."""

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHACTORS_", "XDG_"))}
    env |= {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}

    def cli(runtime: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshactors", *args],
            env=env | {"XDG_RUNTIME_DIR": str(tmp_path / runtime)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    state_lock = tmp_path / "state" / "meshactors" / "daemon.lock"
    started = cli("r1", "daemon", "up", "--detach")
    assert started.returncode == 0, started.stderr
    try:
        pid = read_running_pid(tmp_path / "r1" / "meshactors" / "daemon.pid")
        for up in (("daemon", "up", "--detach"), ("daemon", "up")):
            again = cli("r2", *up)
            assert again.returncode == 1, again.stderr
            assert f"already running (pid {pid}, holding {state_lock})" in again.stderr
        assert not (tmp_path / "r2" / "meshactors" / "daemon.pid").exists()
        down = cli("r2", "daemon", "down")  # found by the state lock, though not on r2's socket
        assert down.returncode == 0, down.stderr
        assert "daemon stopped" in down.stdout
        assert read_running_pid(state_lock) is None
    finally:
        for runtime in ("r1", "r2"):
            cli(runtime, "daemon", "down")


def test_down_sigterms_at_once_a_daemon_on_another_socket(home: Home) -> None:
    home.cli("--socket", str(home.path / "alt.sock"), "daemon", "up", "--detach")
    down = subprocess.run(
        [sys.executable, "-m", "meshactors", "daemon", "down"],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=DOWN_BEFORE_POLL_S,
        check=True,
    )
    assert "daemon stopped" in down.stdout
    assert home.daemon_pid() is None


async def foreground_daemon(home: Home, **options: Any) -> tuple[trio.Process, bytes]:
    """A foreground `daemon up --log-json`, and what it logged until it was ready."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "meshactors", "daemon", "up", "--log-json"],
        env=home.env,
        stderr=subprocess.PIPE,
        **options,
    )
    assert process.stderr is not None
    log = b""
    while b"daemon ready" not in log:
        chunk = await process.stderr.receive_some(4096)
        assert chunk, f"daemon exited before it was ready: {log.decode()}"
        log += chunk
    return process, log


async def logged_to_its_end(process: trio.Process, log: bytes) -> list[dict[str, Any]]:
    """The events a daemon logged, once it exited (status 0: asserted)."""
    assert process.stderr is not None
    while chunk := await process.stderr.receive_some(4096):
        log += chunk
    assert await process.wait() == 0
    return [json.loads(line) for line in log.splitlines()]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
async def test_a_stop_signal_stops_a_foreground_daemon_with_exit_0(
    home: Home, stop: signal.Signals
) -> None:
    with trio.fail_after(30):
        process, log = await foreground_daemon(home)
        process.send_signal(stop)  # SIGHUP: the terminal of a foreground `daemon up` closed
        events = await logged_to_its_end(process, log)
    assert any(e["event"] == "stop signal" and e["signal"] == stop.name for e in events)
    assert any(e["event"] == "daemon stopped" for e in events)
    assert all(e.get("level") != "error" for e in events)
    assert not home.socket.exists()
    assert not (home.path / "daemon.pid").exists()


async def test_a_second_sigterm_during_the_stop_is_ignored_not_fatal(home: Home) -> None:
    """Told in the log while the tree stops; after it (the stop is quick: a busy machine may
    deliver it then) ignored all the same until the process exits."""
    with trio.fail_after(30):
        process, log = await foreground_daemon(home)
        assert process.stderr is not None
        try:
            process.send_signal(signal.SIGTERM)
            while b"daemon stopping" not in log:  # the tree is stopping now
                chunk = await process.stderr.receive_some(4096)
                assert chunk, f"daemon exited before its stop began: {log.decode()}"
                log += chunk
            process.send_signal(signal.SIGTERM)  # as an impatient `kill` or service manager does
            events = await logged_to_its_end(process, log)
        finally:
            process.kill()
    ignored = [e for e in events if e["event"] == "stop signal ignored: the daemon is stopping"]
    assert [e["signal"] for e in ignored] in ([], ["SIGTERM"])
    assert events[-1]["event"] == "daemon stopped"  # and it exited 0 (logged_to_its_end)
    left_behind = {"daemon.sock", "daemon.pid", "state.db-wal", "state.db-shm"}
    assert not left_behind & set(os.listdir(home.path))


def ignoring_hangups() -> None:
    """`preexec_fn` that starts a child as `nohup` does: with SIGHUP ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def test_a_daemon_started_with_sighup_ignored_keeps_serving_after_one(home: Home) -> None:
    """Under `nohup` a closed terminal leaves the daemon running: SIGHUP stays ignored, and
    only the SIGTERM after it (delivered after it) stops the daemon."""
    with trio.fail_after(30):
        process, log = await foreground_daemon(home, preexec_fn=ignoring_hangups)
        try:
            process.send_signal(signal.SIGHUP)
            await trio.to_thread.run_sync(partial(home.cli, "daemon", "status"))  # it answers
            process.send_signal(signal.SIGTERM)
            events = await logged_to_its_end(process, log)
        finally:
            process.kill()
    assert [e["signal"] for e in events if e["event"] == "stop signal"] == ["SIGTERM"]


async def opened_to_write(fifo: Path) -> int:
    """Open `fifo` to write: this returns once a process opened it to read."""
    return await trio.to_thread.run_sync(os.open, fifo, os.O_WRONLY, abandon_on_cancel=True)


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["text", "json"])
async def test_ctrl_c_while_the_commands_load_is_one_line_and_exit_130(
    home: Home, tmp_path: Path, json_flag: tuple[str, ...]
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = home.env | {
        "PYTHONPATH": os.pathsep.join([str(START_GATE), os.environ.get("PYTHONPATH", "")]),
        "START_GATE": str(gate),
        "START_GATE_FOR": "--detach",
        "START_GATE_IMPORT": "trio",  # loaded with the commands, before any of them runs
    }
    with trio.fail_after(60):
        up = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meshactors", "daemon", "up", "--detach", *json_flag],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        held = await opened_to_write(gate)  # it is loading the commands, held there
        try:
            up.send_signal(signal.SIGINT)
            assert up.stdout is not None and up.stderr is not None
            out, err = b"", b""
            while chunk := await up.stderr.receive_some():
                err += chunk
            while chunk := await up.stdout.receive_some():
                out += chunk
            status = await up.wait()
        finally:
            os.close(held)
    assert status == EXIT_INTERRUPTED, err.decode()
    if json_flag:
        assert (json.loads(out), err) == ({"error": ERROR_INTERRUPTED}, b"")
    else:
        assert (out, err) == (b"", b"meshactors: interrupted\n")
    assert home.daemon_pid() is None


@contextmanager
def killed_at_the_end(pid_file: Path) -> Iterator[None]:
    """SIGKILL the process whose pid `pid_file` names, as the block ends and if it still runs:
    the detached daemon, had the test failed before its `daemon down`, would start and run on
    after its home is deleted. It is held by a pidfd from the start, so no other process that
    took its pid meanwhile is signalled."""
    pidfd = os.pidfd_open(int(pid_file.read_text()))
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


@pytest.mark.parametrize("interrupt", ["ctrl-c", "sigterm"])
async def test_interrupting_up_detach_leaves_one_line_and_a_daemon_that_serves(
    home: Home, tmp_path: Path, interrupt: str
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind(str(tmp_path / "notify"))
    env = home.env | {
        "PYTHONPATH": os.pathsep.join([str(START_GATE), os.environ.get("PYTHONPATH", "")]),
        "START_GATE": str(gate),
        "START_GATE_FOR": "--ready-fd",  # the detached child, not `up --detach` itself
        "START_GATE_PID_FILE": str(tmp_path / "gated.pid"),  # written before it waits
        "NOTIFY_SOCKET": str(tmp_path / "notify"),  # the child says READY=1 after its ready line
    }
    with ExitStack() as stack, manager, trio.fail_after(60):
        up = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meshactors", "daemon", "up", "--detach"],
            env=env,
            stderr=subprocess.PIPE,
            process_group=0,  # a shell's job: Ctrl-C signals the whole group
        )
        held = await opened_to_write(gate)  # the child exists, held before its ready line
        stack.enter_context(killed_at_the_end(tmp_path / "gated.pid"))
        try:
            if interrupt == "ctrl-c":
                os.killpg(up.pid, signal.SIGINT)
            else:
                up.send_signal(signal.SIGTERM)
            assert up.stderr is not None
            err = b""
            while chunk := await up.stderr.receive_some():
                err += chunk
            status = await up.wait()
        finally:
            os.close(held)  # the child starts, with nobody waiting for its ready line
        assert status == EXIT_INTERRUPTED, err.decode()
        assert await manager.recv(4096) == f"READY=1\nSTATUS=serving on {home.socket}".encode()
        pid = home.daemon_pid()
        assert err.decode() == (
            f"meshactors: interrupted: the daemon (pid {pid}) goes on starting in the "
            "background; `meshactors daemon status` says when it serves, `meshactors daemon "
            f"down` stops it (log {home.path / 'daemon.log'})\n"
        )
        assert home.cli("daemon", "status").returncode == 0
        home.cli("daemon", "down")
    log = (home.path / "daemon.log").read_text()
    assert "ready line unread" in log
    assert "Traceback" not in log


def wait_for_lock_release(pid_file: Path) -> None:
    """Block until no process holds the daemon lock (the kernel drops it when one dies)."""
    with open(pid_file, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        fcntl.flock(handle, fcntl.LOCK_UN)


def test_killed_daemon_leaves_nothing_that_blocks_a_restart(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    pid = home.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for_lock_release(home.path / "daemon.pid")
    assert home.socket.exists()  # the killed daemon left its socket behind
    home.cli("daemon", "up", "--detach")
    assert home.cli("daemon", "status").returncode == 0
    assert home.daemon_pid() not in (None, pid)


def test_host_guard_refuses_another_machine_until_accepted(home: Home) -> None:
    home.cli("identity", "show")
    home.cli("daemon", "up", "--detach")
    home.cli("daemon", "down")
    # the home now looks copied from another machine
    other = HostFacts(machine_id="a" * 64, mac="b" * 64)
    accept_host(home.path / "host.json", other)
    refused = home.cli("daemon", "up", "--detach", check=False)
    assert refused.returncode == 4
    assert "meshactors daemon accept-host" in refused.stderr
    assert home.daemon_pid() is None
    home.cli("daemon", "accept-host")
    home.cli("daemon", "up", "--detach")
    assert home.daemon_pid() is not None


def test_corrupt_host_record_is_a_clear_error(home: Home) -> None:
    home.cli("identity", "show")
    (home.path / "host.json").write_text("{ definitely not json")
    refused = home.cli("daemon", "up", "--detach", check=False)
    assert refused.returncode == 4
    assert "corrupt" in refused.stderr


def test_an_unreadable_host_record_is_exit_3_not_corrupt(home: Home) -> None:
    home.cli("identity", "show")
    home.cli("daemon", "accept-host")
    host_file = home.path / "host.json"
    host_file.chmod(0)  # root's own 0600 file, as a `sudo meshactors daemon up` leaves it

    refused = home.cli("daemon", "up", check=False, preexec_fn=obeying_file_modes)

    assert refused.returncode == 3, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line == f"meshactors: host record {host_file} is unreadable (Permission denied)"


def test_a_damaged_database_is_refused_in_the_stores_own_words(home: Home) -> None:
    home.cli("identity", "show")
    garbage = bytes(range(256)) * 256
    (home.path / "state.db").write_bytes(garbage)
    refused = home.cli("daemon", "up", check=False)
    assert refused.returncode == 3
    assert "is damaged or not a SQLite database" in refused.stderr
    assert "left untouched" in refused.stderr
    assert (home.path / "state.db").read_bytes() == garbage
