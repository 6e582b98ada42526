"""A real daemon tree in-process, in a temporary home, and line and raw HTTP clients for its
socket: the fixtures tests/control, tests/ops and tests/fuzz share (their conftests import them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.control.supervisor import MAX_CLIENTS
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.services import Services
from meshactors.identity import load_or_create_identity
from meshactors.paths import prepare_dirs, resolve_paths
from tests.control.httptools import RawHttp
from tests.support import LineClient

Connect = Callable[[], Awaitable[RawHttp]]
HTTP_DEADLINE = 10  # seconds a test that opens raw HTTP connections may take in all


@asynccontextmanager
async def serving(
    home: Path, tcp_port: int | None = None, max_clients: int = MAX_CLIENTS
) -> AsyncIterator[Services]:
    """A daemon tree in `home` (and on loopback TCP if `tcp_port` is given) until the block ends."""
    paths = resolve_paths({"MESHACTORS_HOME": str(home)})
    prepare_dirs(paths)
    identity = load_or_create_identity(paths.identity_file)
    options = DaemonOptions(
        paths=paths, identity=identity, tcp_port=tcp_port, max_clients=max_clients
    )
    async with trio.open_nursery() as nursery:
        services: Services = await nursery.start(serve, options)
        try:
            yield services
        finally:
            services.shutdown.ring()  # also when the block fails, or the daemon would outlive it


@asynccontextmanager
async def raw_http(
    open_stream: Callable[[], Awaitable[trio.SocketStream]],
) -> AsyncIterator[Connect]:
    """Opens RawHttp connections on streams from `open_stream`; closes them when the block ends."""
    streams: list[trio.SocketStream] = []

    async def open_http() -> RawHttp:
        stream = await open_stream()
        streams.append(stream)
        return RawHttp(stream)

    with trio.fail_after(HTTP_DEADLINE):
        yield open_http
    for stream in streams:
        await stream.aclose()


@pytest.fixture
async def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Services]:
    """A daemon tree in `tmp_path`; parametrized indirectly, with `serving`'s options."""
    async with serving(tmp_path, **getattr(request, "param", {})) as services:
        yield services


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


@pytest.fixture
async def http(daemon: Services) -> AsyncIterator[Connect]:
    """Raw HTTP connections to the daemon's socket, closed afterwards."""
    async with raw_http(partial(trio.open_unix_socket, str(daemon.paths.socket))) as open_http:
        yield open_http
