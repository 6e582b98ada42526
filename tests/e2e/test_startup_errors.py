"""A daemon or broker that cannot start says why in one line, with exit 3, in the foreground
and with --detach: a taken port names the address and the OS's reason."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Home, no_file_growth

pytestmark = pytest.mark.e2e


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port: int = holder.getsockname()[1]
        yield port


@pytest.mark.parametrize(
    "command",
    [
        ("daemon", "up", "--broker-listen", "127.0.0.1:{port}"),
        ("daemon", "up", "--tcp", "{port}"),
        ("daemon", "up", "--detach", "--broker-listen", "127.0.0.1:{port}"),
        ("daemon", "up", "--detach", "--tcp", "{port}"),
        ("broker", "--listen", "127.0.0.1:{port}"),
    ],
    ids=["broker-listen", "tcp", "detach-broker-listen", "detach-tcp", "broker"],
)
def test_a_taken_port_is_one_line_and_exit_3(
    home: Home, taken_port: int, command: tuple[str, ...]
) -> None:
    result = home.cli(*(word.format(port=taken_port) for word in command), check=False)
    said = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 3, result.stderr
    assert len(said) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{taken_port}: address already in use" in said[0]
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr


@pytest.mark.parametrize("command", [("daemon", "up"), ("daemon", "accept-host")])
def test_an_unwritable_host_record_is_exit_3_not_a_host_refusal(
    home: Home, command: tuple[str, ...]
) -> None:
    home.cli("identity", "show")  # the identity, no host record yet: it is written next

    result = home.cli(*command, check=False, preexec_fn=no_file_growth)
    as_json = home.cli(*command, "--json", check=False, preexec_fn=no_file_growth)

    host_file = home.path / "host.json"
    assert result.returncode == as_json.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == f"meshactors: cannot write host record {host_file}: File too large"
    assert json.loads(as_json.stdout)["error"]["code"] == "startup", as_json.stdout
    assert not host_file.exists()


def test_a_corrupt_database_with_detach_reports_the_childs_reason(home: Home) -> None:
    home.cli("identity", "show")
    (home.path / "state.db").write_bytes(b"this is not a SQLite database" * 100)
    for _ in range(5):  # the parent once polled a child that had not exited yet
        result = home.cli("daemon", "up", "--detach", check=False)
        assert result.returncode == 3, result.stderr
        assert "damaged or not a SQLite database" in result.stderr, result.stderr


def test_an_emptied_database_is_refused_not_started_afresh(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    home.cli("network", "add", "lan", "--broker", "ws://127.0.0.1:9/v1")
    home.cli("daemon", "down")
    state = home.path / "state.db"
    state.write_bytes(b"")  # `: > state.db`: opened as is, every network would be forgotten
    for detach in ([], ["--detach"]):
        result = home.cli("daemon", "up", *detach, check=False)
        assert result.returncode == 3, result.stderr
        assert "is damaged or not a SQLite database (the file is empty)" in result.stderr
        assert "left untouched" in result.stderr
        assert "Traceback" not in result.stderr
    assert state.read_bytes() == b""


OBSTACLES: dict[str, Callable[[Path], None]] = {
    "regular file": lambda path: path.write_text("notes\n"),
    "directory": lambda path: path.mkdir(),
    "symlink": lambda path: path.symlink_to(path.with_name("elsewhere.sock")),
}


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
@pytest.mark.parametrize("kind", sorted(OBSTACLES))
def test_something_in_the_sockets_way_is_named_not_taken_for_a_daemon(
    home: Home, kind: str, detach: bool
) -> None:
    home.cli("identity", "show")
    OBSTACLES[kind](home.socket)

    result = home.cli("daemon", "up", *(["--detach"] if detach else []), check=False)

    said = [line for line in result.stderr.splitlines() if line.startswith("meshactors:")]
    assert result.returncode == 3, result.stderr
    assert len(said) == 1, result.stderr
    assert f"cannot listen on {home.socket}: a {kind} is in the way" in said[0]
    assert "Traceback" not in result.stderr
    assert os.path.lexists(home.socket)  # left as it was


def test_a_socket_path_too_long_is_named(tmp_path: Path) -> None:
    home = Home(tmp_path / ("h" * 120))
    home.path.mkdir()
    try:
        result = home.cli("daemon", "up", check=False)
    finally:
        home.stop_daemon()

    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    size = len(os.fsencode(home.socket))
    assert line == (
        f"meshactors: the daemon could not start: cannot listen on {home.socket}: the path is "
        f"{size} bytes, longer than the 107 a Unix socket's may be (use a shorter "
        "MESHACTORS_HOME, or --socket PATH)"
    )


@pytest.mark.parametrize("detach", [True, False], ids=["detach", "foreground"])
def test_a_socket_another_homes_daemon_listens_on_is_refused_not_taken(
    homes: tuple[Home, Home], detach: bool
) -> None:
    first, second = homes
    first.cli("daemon", "up", "--detach")
    first_id = json.loads(first.cli("daemon", "status", "--json").stdout)["device_id"]

    detached = ["--detach"] if detach else []
    result = second.cli("--socket", str(first.socket), "daemon", "up", *detached, check=False)

    said = [line for line in result.stderr.splitlines() if line.startswith("meshactors:")]
    assert result.returncode == 3, result.stderr
    assert len(said) == 1, result.stderr
    assert (
        f"cannot listen on {first.socket}: another daemon listens there "
        "(stop it, or use another --socket PATH)"
    ) in said[0]
    assert second.daemon_pid() is None
    status = json.loads(first.cli("daemon", "status", "--json").stdout)
    assert status["device_id"] == first_id  # the socket still leads to the first daemon
