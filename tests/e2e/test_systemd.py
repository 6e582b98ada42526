"""The daemon under a stand-in for systemd: real `meshactors daemon up` processes given a
NOTIFY_SOCKET and watchdog, a journald stream, and a socket passed as fd 3 (LISTEN_FDS)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.support import Home, LineClient, listening_unix_socket

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 100_000  # 0.1 s: the daemon pings every 0.05 s
# What systemd does before exec'ing a socket-activated service: the socket on fd 3, and
# LISTEN_PID naming the process itself (known only after the fork).
ACTIVATION_WRAPPER = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "meshactors", *sys.argv[2:]])
"""


async def next_state(manager: trio.socket.SocketType) -> bytes:
    """The next notification that is not a watchdog ping."""
    while (message := await manager.recv(4096)) == b"WATCHDOG=1":
        pass
    return message


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_ready_watchdog_stopping_and_journald_priorities(home: Home, tmp_path: Path) -> None:
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind(str(tmp_path / "notify"))
    read_end, write_end = os.pipe()
    pipe = os.fstat(write_end)
    env = home.env | {
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "JOURNAL_STREAM": f"{pipe.st_dev}:{pipe.st_ino}",  # stderr is "connected to journald"
    }
    with manager, trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meshactors", "daemon", "up"], env=env, stderr=write_end
        )
        os.close(write_end)
        stderr = trio.lowlevel.FdStream(read_end)
        async with stderr:
            assert await next_state(manager) == (
                f"READY=1\nSTATUS=serving on {home.socket}".encode()
            )
            assert home.daemon_pid() == process.pid
            for _ in range(3):  # repeated pings: the store keeps answering the probes
                assert await manager.recv(4096) == b"WATCHDOG=1"
            process.send_signal(signal.SIGTERM)
            assert await next_state(manager) == b"STOPPING=1\nSTATUS=stopping"
            log = (await read_all(stderr)).decode()
        assert await process.wait() == 0

    lines = log.splitlines()
    assert lines, "the daemon logged nothing"
    assert all(re.match(r"<[2-7]>\{", line) for line in lines), log
    assert any(line.startswith("<6>") and "daemon ready" in line for line in lines)


@pytest.fixture
def activation_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """The listening socket a socket unit would hold."""
    with listening_unix_socket(tmp_path / "activated.sock") as sock:
        yield sock


async def test_socket_activation_serves_the_passed_socket(
    home: Home, tmp_path: Path, activation_socket: socket.socket
) -> None:
    path = tmp_path / "activated.sock"
    fd = activation_socket.fileno()
    with trio.fail_after(30):
        # the first client connects before the daemon exists, as with a socket unit
        client = LineClient(await trio.open_unix_socket(str(path)))
        await client.send("status")
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", ACTIVATION_WRAPPER, str(fd), "daemon", "up", "--log-json"],
            env=home.env,
            pass_fds=(fd,),
        )
        status = (await client.frame())["data"]
        assert status["socket"] == str(path)
        assert (await client.call("version"))["ok"] is True
        await client.aclose()

        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0

    assert path.is_socket()  # left for the manager, which still holds it
    assert not home.socket.exists()  # the daemon bound nothing of its own
    assert home.daemon_pid() is None


def up_as_a_service(
    home: Home, env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess[str]:
    """Run `daemon up FLAGS` with `env` added and LISTEN_PID naming it, as systemd execs it."""
    command = (
        "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, '-m', 'meshactors', 'daemon', 'up', "
        "*sys.argv[1:]])"
    )
    return subprocess.run(
        [sys.executable, "-c", command, *flags],
        env=home.env | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_malformed_activation_is_a_startup_error(home: Home) -> None:
    result = up_as_a_service(home, {"LISTEN_FDS": "2"})

    assert result.returncode == 3
    assert "bad_socket_activation" in result.stderr
    assert home.daemon_pid() is None


@pytest.mark.parametrize(
    ("env", "code"),
    [
        ({"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "soon"}, "bad_notify_env"),
        ({"NOTIFY_SOCKET": "relative/notify"}, "bad_notify_env"),
        ({"LISTEN_FDS": "2"}, "bad_socket_activation"),
    ],
    ids=["watchdog-usec", "notify-socket", "listen-fds"],
)
def test_a_broken_service_manager_setup_has_its_own_json_code(
    home: Home, env: dict[str, str], code: str
) -> None:
    result = up_as_a_service(home, env, "--json")

    assert result.returncode == 3
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code
    assert not error["message"].startswith(code)  # named once, by the code


def test_a_startup_failure_under_journald_has_the_error_priority(home: Home) -> None:
    (home.path / "daemon.toml").write_text("tpc = 1\n")
    read_end, write_end = os.pipe()
    pipe = os.fstat(write_end)
    with os.fdopen(read_end, "rb") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "meshactors", "daemon", "up"],
            env=home.env | {"JOURNAL_STREAM": f"{pipe.st_dev}:{pipe.st_ino}"},
            stderr=write_end,
        )
        os.close(write_end)
        said = stderr.read().decode()
    assert up.wait(60) == 3
    assert said.startswith("<3>meshactors: "), said
    assert "unknown key 'tpc'" in said
