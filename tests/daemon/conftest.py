"""A real daemon tree in-process, in a temporary home, and a line client for its socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.services import Services
from meshactors.identity import load_or_create_identity
from meshactors.paths import prepare_dirs, resolve_paths
from tests.daemon.httptools import RawHttp
from tests.support import LineClient


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Services]:
    paths = resolve_paths({"MESHACTORS_HOME": str(tmp_path)})
    prepare_dirs(paths)
    options = DaemonOptions(paths=paths, identity=load_or_create_identity(paths.identity_file))
    async with trio.open_nursery() as nursery:
        services: Services = await nursery.start(serve, options)
        yield services
        services.shutdown.set()


@pytest.fixture
async def connect(daemon: Services) -> AsyncIterator[Any]:
    clients: list[LineClient] = []

    async def open_client() -> LineClient:
        client = LineClient(await trio.open_unix_socket(str(daemon.paths.socket)))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.aclose()


Connect = Callable[[], Awaitable[RawHttp]]


@pytest.fixture
async def http(daemon: Services) -> AsyncIterator[Connect]:
    """Raw HTTP connections to the daemon's socket, closed afterwards."""
    streams: list[trio.SocketStream] = []

    async def open_http() -> RawHttp:
        stream = await trio.open_unix_socket(str(daemon.paths.socket))
        streams.append(stream)
        return RawHttp(stream)

    with trio.fail_after(10):
        yield open_http
    for stream in streams:
        await stream.aclose()
