"""A stop signal while the daemon's tree starts, a store call of the start held in the store's
thread: the start is cancelled, and the daemon stops without ever serving."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import structlog
import trio

from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.sdnotify import Notifier
from meshactors.identity import load_or_create_identity
from meshactors.paths import prepare_dirs, resolve_paths
from meshactors.store import events as event_log
from tests.daemon.outbox_parts import HELD_WAIT, HeldStoreCall

STOP = signal.SIGUSR1  # the test's stop signal: SIGTERM would end pytest if its receiver were gone


async def test_a_stop_signal_cancels_a_start_waiting_for_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = resolve_paths({"MESHACTORS_HOME": str(tmp_path / "home")})
    prepare_dirs(paths)
    readied: list[bool] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        options = DaemonOptions(
            paths=paths,
            identity=load_or_create_identity(paths.identity_file),
            ready=lambda: readied.append(True),
            notifier=Notifier(manager.getsockname()),
            stops=(STOP,),
        )
        numbering = HeldStoreCall.hold(monkeypatch, event_log, "resume_numbering")
        listener = trio.socket.from_stdlib_socket(manager)
        with structlog.testing.capture_logs() as logs, trio.fail_after(HELD_WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, options)
                await numbering.holding.wait()  # the event hub's start waits for the store
                os.kill(os.getpid(), STOP)
                said = await listener.recv(4096)  # sent as the stop begins, before serving
                numbering.release.set()  # the store's stop waits for its thread
    assert said == b"STOPPING=1\nSTATUS=stopping"
    assert readied == []
    said_in_log = [entry["event"] for entry in logs if entry["event"].startswith("daemon ")]
    assert said_in_log == ["daemon stopping", "daemon stopped"]
