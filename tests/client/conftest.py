"""Daemons for the client tests: in-process ones that can be stopped and started again in the
same home, and real processes from the CLI (tests.support.Home)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
import trio

from meshactors.client import MeshClient
from meshactors.client._serving import Handler, StreamHandler
from meshactors.control.supervisor import MAX_CLIENTS
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.services import Services
from meshactors.identity import load_or_create_identity
from meshactors.paths import Paths, prepare_dirs, resolve_paths
from tests.support import Home

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself


@attrs.define(eq=False)
class LocalDaemon:
    """A real daemon tree in this trio run, in a temporary home; `stop` then `start` restarts it
    with the same state database, as a restarted process would."""

    paths: Paths
    nursery: trio.Nursery
    services: Services | None = None
    debug_ops: bool = False  # `daemon up --debug-ops`: `debug_crash` answers
    max_clients: int = MAX_CLIENTS  # clients served at once
    _stopped: trio.Event = attrs.field(factory=trio.Event)

    async def start(self) -> Services:
        options = DaemonOptions(
            paths=self.paths,
            identity=load_or_create_identity(self.paths.identity_file),
            debug_ops=self.debug_ops,
            max_clients=self.max_clients,
        )
        self._stopped = trio.Event()
        self.services = await self.nursery.start(self._run, options)
        return self.services

    async def _run(self, options: DaemonOptions, *, task_status: trio.TaskStatus[Services]) -> None:
        try:
            await serve(options, task_status=task_status)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        assert self.services is not None
        self.services.shutdown.ring()
        await self._stopped.wait()
        self.services = None


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalDaemon]:
    """An in-process daemon, not yet started."""
    paths = resolve_paths({"MESHACTORS_HOME": str(tmp_path)})
    prepare_dirs(paths)
    async with trio.open_nursery() as nursery:
        daemon = LocalDaemon(paths, nursery)
        yield daemon
        if daemon.services is not None:
            await daemon.stop()


@pytest.fixture
async def running(local: LocalDaemon) -> LocalDaemon:
    """An in-process daemon, started."""
    await local.start()
    return local


@contextlib.asynccontextmanager
async def served_to_a_caller(
    daemon: LocalDaemon, method: str, handler: Handler | StreamHandler
) -> AsyncIterator[tuple[MeshClient, MeshClient, str]]:
    """A connection serving `method` with `handler` on NETWORK, a second connection to call it
    from, and this device's id (the peer to call): (server, caller, device id)."""
    async with (
        MeshClient(daemon.paths.socket) as server,
        MeshClient(daemon.paths.socket) as caller,
    ):
        await server.ensure_networks([NETWORK])
        me = (await server.status())["device_id"]
        await server.serve("lan", method, handler)
        yield server, caller, me


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A temporary home for real daemon processes; whatever daemon it started is stopped."""
    home = Home(tmp_path)
    yield home
    home.stop_daemon()


def count_connects(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str, retried: trio.Event
) -> list[Path]:
    """Each connection `module.name` (a connect, given the socket's path first) opens from
    now on, by path, in a list; `retried` is set once it opens a second one (the first was
    refused)."""
    connect = getattr(module, name)
    opened: list[Path] = []

    def counted(path: Path, *args: Any) -> Any:
        opened.append(path)
        if len(opened) == 2:
            retried.set()
        return connect(path, *args)

    monkeypatch.setattr(module, name, counted)
    return opened
