"""Socket activation: reading LISTEN_FDS/LISTEN_PID, checking the passed socket, and a daemon
tree that serves on an adopted socket and leaves it in place when it stops."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshactors.control.supervisor import (
    ActivationError,
    activated_socket,
    inherited_socket_path,
)
from meshactors.daemon.lock import DaemonLock
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.identity import load_or_create_identity
from meshactors.paths import prepare_dirs, resolve_paths
from tests.support import LineClient, listening_unix_socket


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[socket.socket]:
    """A listening Unix socket, as a service manager would bind it."""
    with listening_unix_socket(tmp_path / "activated.sock") as sock:
        yield sock


def test_no_listen_fds_means_not_activated() -> None:
    env = {"PATH": "/bin"}

    assert activated_socket(env) is None
    assert env == {"PATH": "/bin"}


def test_variables_for_another_process_are_ignored_and_removed() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "control"}

    assert activated_socket(env) is None
    assert env == {}


@pytest.mark.parametrize("count", ["2", "0", "one", ""])
def test_anything_but_one_socket_for_us_is_a_typed_error(count: str) -> None:
    env = {"LISTEN_FDS": count, "LISTEN_PID": str(os.getpid())}

    with pytest.raises(ActivationError) as caught:
        activated_socket(env)
    assert caught.value.code == "bad_socket_activation"
    assert env == {}


def test_a_listening_unix_socket_is_accepted_with_its_path(
    listening: socket.socket, tmp_path: Path
) -> None:
    os.set_inheritable(listening.fileno(), True)  # as systemd passes it

    assert inherited_socket_path(listening.fileno()) == tmp_path / "activated.sock"
    assert listening.getsockname() == str(tmp_path / "activated.sock")  # inspected, not closed
    assert not os.get_inheritable(listening.fileno())  # our future children do not get it


def test_other_descriptors_are_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        with pytest.raises(ActivationError, match="not a listening Unix stream socket"):
            inherited_socket_path(tcp.fileno())
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound,
        pytest.raises(ActivationError, match="not a listening"),
    ):
        inherited_socket_path(unbound.fileno())
    with (
        open(tmp_path / "file", "w") as plain,
        pytest.raises(ActivationError, match="not a usable socket"),
    ):
        inherited_socket_path(plain.fileno())


async def test_daemon_serves_on_the_adopted_socket_and_leaves_it(
    listening: socket.socket, tmp_path: Path
) -> None:
    path = inherited_socket_path(listening.fileno())
    paths = resolve_paths(
        {"MESHACTORS_HOME": str(tmp_path / "home"), "MESHACTORS_SOCKET": str(path)}
    )
    prepare_dirs(paths)
    options = DaemonOptions(
        paths=paths,
        identity=load_or_create_identity(paths.identity_file),
        listen_fd=listening.fileno(),
    )
    with trio.fail_after(10):
        # a client that connected before the daemon ran is answered once it does
        early = LineClient(await trio.open_unix_socket(str(path)))
        await early.send("status")
        with DaemonLock.acquire(paths.lock_files, path, keep_socket=True):
            async with trio.open_nursery() as nursery:
                services = await nursery.start(serve, options)
                status = await early.frame()
                assert status["data"]["socket"] == str(path)
                listener = services.tree.find("daemon/control/listener")
                assert listener is not None
                assert listener.snapshot()["figures"]["activated"] is True
                services.shutdown.ring()
        await early.aclose()
    assert path.is_socket()  # the manager's socket outlives the daemon
    late = LineClient(await trio.open_unix_socket(str(path)))  # and still takes connections
    await late.aclose()
