"""sd_notify without libsystemd: the environment, datagrams on a real socket, the watchdog actor
under a mock clock, and READY/WATCHDOG/STOPPING from a real daemon tree."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import ActorGone
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.sdnotify import (
    MIN_WATCHDOG_INTERVAL,
    Notifier,
    NotifierActor,
    NotifyEnvError,
)
from meshactors.identity import load_or_create_identity
from meshactors.paths import prepare_dirs, resolve_paths

PID = 4242


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    with sock:
        yield sock


def received(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on `sock`."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


def test_no_notify_socket_means_no_manager_and_sends_are_no_ops() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"}, PID)

    assert notifier.address is None
    assert notifier.watchdog_interval is None
    assert notifier.ready("serving") is False
    assert notifier.sent == notifier.failed == 0


def test_environment_gives_the_address_and_half_the_watchdog_period() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}

    notifier = Notifier.from_env(env, PID)

    assert notifier.address == "/run/systemd/notify"
    assert notifier.watchdog_interval == 15.0
    assert Notifier.from_env({"NOTIFY_SOCKET": "@sd"}, PID).address == "\0sd"


def test_watchdog_for_another_pid_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "2000000"}

    assert Notifier.from_env(env | {"WATCHDOG_PID": str(PID + 1)}, PID).watchdog_interval is None
    assert Notifier.from_env(env | {"WATCHDOG_PID": str(PID)}, PID).watchdog_interval == 1.0


def test_a_tiny_watchdog_period_is_floored() -> None:
    env = {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "1"}

    assert Notifier.from_env(env, PID).watchdog_interval == MIN_WATCHDOG_INTERVAL


@pytest.mark.parametrize(
    "env",
    [
        {"NOTIFY_SOCKET": "relative/notify"},
        {"NOTIFY_SOCKET": "@"},
        {"NOTIFY_SOCKET": "/" + "x" * 200},
        {"NOTIFY_SOCKET": "/" + "é" * 60},  # 61 characters, but 121 bytes: too long
        {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "soon"},
        {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "0"},
        {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "+5"},
        {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "١٢"},
        {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "me"},
    ],
)
def test_malformed_environment_is_a_typed_error(env: dict[str, str]) -> None:
    with pytest.raises(NotifyEnvError) as caught:
        Notifier.from_env(env, PID)
    assert caught.value.code == "bad_notify_env"


def test_messages_arrive_as_one_datagram_each(manager: socket.socket) -> None:
    notifier = Notifier(manager.getsockname())

    assert notifier.ready("serving on\n/x.sock")
    assert notifier.ping()
    assert notifier.stopping("stopping")

    assert received(manager) == [
        b"READY=1\nSTATUS=serving on /x.sock",
        b"WATCHDOG=1",
        b"STOPPING=1\nSTATUS=stopping",
    ]
    assert notifier.sent == 3


def test_abstract_socket_address_works() -> None:
    name = f"meshactors-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name}, PID)
        assert notifier.ping()
        assert received(sock) == [b"WATCHDOG=1"]
    assert notifier.figures()["notify_socket"] == "@" + name


def test_a_vanished_manager_costs_a_warning_not_the_daemon(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))

    assert notifier.ping() is False
    assert (notifier.sent, notifier.failed) == (0, 1)


def test_a_broken_manager_is_warned_about_once_per_run_of_failures(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    notifier = Notifier(str(path))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert notifier.ping() is False  # nobody listens yet
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            assert notifier.ping()
        for _ in range(2):
            assert notifier.ping() is False  # gone again
    levels = [e["log_level"] for e in logs if e["event"] == "service manager notification failed"]
    assert levels == ["warning", "debug", "debug", "warning", "debug"]
    assert (notifier.sent, notifier.failed) == (1, 5)


@attrs.define
class ScriptedHealthProbe:
    """A probe whose answer the test decides: answer, never answer, or fail."""

    mode: str = "answer"

    async def __call__(self) -> None:
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "fail":
            raise ActorGone("store: the actor is not running")


async def test_watchdog_pings_each_interval_only_while_the_probe_answers(
    autojump_clock: trio.testing.MockClock, manager: socket.socket
) -> None:
    probe = ScriptedHealthProbe()
    actor = NotifierActor(Notifier(manager.getsockname(), watchdog_interval=1.0), probe)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.sleep(1.5)  # probes at t=0 and t=1 answer
        assert (actor.pings, actor.missed) == (2, 0)

        probe.mode = "hang"
        await trio.sleep(2.0)  # t=2 times out at t=3; t=3 is still waiting
        assert (actor.pings, actor.missed) == (2, 1)

        probe.mode = "fail"
        await trio.sleep(1.0)  # t=3 times out at t=4; t=4 fails at once
        assert (actor.pings, actor.missed) == (2, 3)

        probe.mode = "answer"
        await trio.sleep(1.0)  # t=5 answers
        assert (actor.pings, actor.missed) == (3, 3)
        nursery.cancel_scope.cancel()

    assert received(manager) == [b"WATCHDOG=1"] * 3
    assert actor.figures()["pings"] == 3


async def test_without_a_watchdog_the_actor_only_waits(
    autojump_clock: trio.testing.MockClock, manager: socket.socket
) -> None:
    actor = NotifierActor(Notifier(manager.getsockname()), ScriptedHealthProbe())
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()

    assert received(manager) == []
    assert actor.pings == 0


async def test_daemon_tree_sends_ready_watchdog_then_stopping(
    tmp_path: Path, manager: socket.socket
) -> None:
    paths = resolve_paths({"MESHACTORS_HOME": str(tmp_path / "home")})
    prepare_dirs(paths)
    notifier = Notifier(manager.getsockname(), watchdog_interval=0.05)
    options = DaemonOptions(
        paths=paths, identity=load_or_create_identity(paths.identity_file), notifier=notifier
    )
    listener = trio.socket.from_stdlib_socket(manager)
    messages: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            services = await nursery.start(serve, options)
            while b"WATCHDOG=1" not in messages:  # the store answered a probe
                messages.append(await listener.recv(4096))
            figures = services.tree.children["notifier"].snapshot()["figures"]
            assert figures["pings"] >= 1
            assert figures["watchdog_interval_s"] == 0.05
            services.shutdown.ring()
        messages += received(manager)
    assert [m for m in messages if m != b"WATCHDOG=1"] == [
        f"READY=1\nSTATUS=serving on {paths.socket}".encode(),
        b"STOPPING=1\nSTATUS=stopping",
    ]
    assert messages[-1] == b"STOPPING=1\nSTATUS=stopping"
