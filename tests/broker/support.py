"""Test helpers: a broker on 127.0.0.1 port 0 and real trio-websocket clients that join it."""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from nacl.signing import SigningKey
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from meshactors.broker.limits import BrokerConfig
from meshactors.broker.server import Broker
from meshactors.clock import wall_ms
from meshactors.wire.broker import build_hello, decode_batch

WAIT_S = 5.0  # upper bound for any single expected event in these tests


async def start_broker(nursery: trio.Nursery, **config: Any) -> tuple[Broker, str]:
    """Serve a broker with `config` overrides in `nursery`; return it and its /v1 URL."""
    broker = Broker(BrokerConfig(**config))
    port = await nursery.start(broker.serve, "127.0.0.1", 0)
    return broker, f"ws://127.0.0.1:{port}/v1"


@attrs.define
class StopWatchedBroker(Broker):
    """A broker whose `stop_ran` is set once _stop ended what it serves: a test orders what
    happens after the stop began against it."""

    stop_ran: trio.Event = attrs.field(init=False, factory=trio.Event)

    def _stop(self, lifetime: trio.CancelScope, accepting: trio.CancelScope) -> None:
        super()._stop(lifetime, accepting)
        self.stop_ran.set()


async def serve_until_stopped(
    nursery: trio.Nursery, broker: Broker
) -> tuple[int, trio.CancelScope, trio.Event]:
    """Serve `broker` in `nursery`; return its port, the scope whose cancel stops it, and an
    event set once it stopped."""
    shutdown, stopped = trio.CancelScope(), trio.Event()

    async def serve(*, task_status: trio.TaskStatus[int]) -> None:
        with shutdown:
            await broker.serve("127.0.0.1", 0, task_status=task_status)
        stopped.set()

    port: int = await nursery.start(serve)
    return port, shutdown, stopped


def hello(key: SigningKey, network: str, role: str = "daemon") -> str:
    return build_hello(key, network, role, now_ms=wall_ms())


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(url, connect_timeout=WAIT_S, disconnect_timeout=WAIT_S) as ws:
        yield ws


@asynccontextmanager
async def connect_from(url: str, local_host: str) -> AsyncIterator[WebSocketConnection]:
    """A connection from `local_host`, another loopback address: another client address."""
    host, port = url.split("/")[2].rsplit(":", 1)
    sock = trio.socket.socket()
    await sock.bind((local_host, 0))
    await sock.connect((host, int(port)))
    async with trio.SocketStream(sock) as stream, trio.open_nursery() as nursery:
        with trio.fail_after(WAIT_S):
            ws = await wrap_client_stream(nursery, stream, host, "/v1")
        try:
            yield ws
        finally:
            with trio.move_on_after(WAIT_S):
                await ws.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def joined(
    url: str, key: SigningKey, network: str, role: str = "daemon", local_host: str | None = None
) -> AsyncIterator[tuple[WebSocketConnection, dict[str, Any]]]:
    """A connection (from `local_host` if given) that sent a valid hello; yields it with the
    welcome it received."""
    async with connect(url) if local_host is None else connect_from(url, local_host) as ws:
        await ws.send_message(hello(key, network, role))
        with trio.fail_after(WAIT_S):
            welcome = json.loads(await ws.get_message())
        assert welcome["type"] == "welcome"
        yield ws, welcome


async def closed_with(ws: WebSocketConnection) -> CloseReason:
    """Wait for the broker to close `ws` and return the close reason (no messages expected)."""
    with trio.fail_after(WAIT_S):
        try:
            message = await ws.get_message()
        except ConnectionClosed as closed:
            assert closed.reason is not None
            return closed.reason
    raise AssertionError(f"expected a close, got {message!r}")


async def drained_to_close(ws: WebSocketConnection) -> CloseReason:
    """Read and discard messages until the broker closes `ws`; return the close reason."""
    with trio.fail_after(WAIT_S):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                assert closed.reason is not None
                return closed.reason


async def next_text(
    ws: WebSocketConnection, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Skip messages until a TEXT notice satisfying `wanted` arrives."""
    with trio.fail_after(WAIT_S):
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                notice: dict[str, Any] = json.loads(message)
                if wanted(notice):
                    return notice


async def next_batch(ws: WebSocketConnection) -> list[tuple[bytes, bytes]]:
    """Skip TEXT notices until the next BINARY batch arrives; return its records."""
    with trio.fail_after(WAIT_S):
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                return decode_batch(message)


def left(device_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda notice: notice == {"type": "presence", "event": "leave", "device_id": device_id}
