"""Interop on real loopback sockets with trio-websocket (wsproto) as the independent peer."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
import trio_websocket

from meshactors.websocket import (
    ConnectionClosed,
    WebSocket,
    accept_response,
    open_websocket,
    read_upgrade_request,
)
from tests.websocket.support import WAIT_S

LIMIT = 4 * 1024 * 1024  # max message bytes on both sides; the tests send 1 MiB
MESSAGES: list[str | bytes] = ["héllo", b"\x00\x01\xff", b"", bytes(range(256)) * 4096]
CLOSE_ME = "close please"  # asks the echo server to close with SERVER_CLOSE
SERVER_CLOSE = (4002, "as asked")


def code_and_reason(closed: trio_websocket.ConnectionClosed) -> tuple[int, str | None]:
    """What a trio-websocket ConnectionClosed reports."""
    assert closed.reason is not None
    return closed.reason.code, closed.reason.reason


async def start_trio_websocket_echo(
    nursery: trio.Nursery, closes: list[tuple[int, str | None]]
) -> str:
    """A trio-websocket echo server; records each close it sees; returns its URL."""

    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while (message := await ws.get_message()) != CLOSE_ME:
                await ws.send_message(message)
            await ws.aclose(*SERVER_CLOSE)
        except trio_websocket.ConnectionClosed as closed:
            closes.append(code_and_reason(closed))

    serve = partial(trio_websocket.serve_websocket, max_message_size=LIMIT)
    server = await nursery.start(serve, echo, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/echo"


async def test_our_client_against_trio_websocket_server() -> None:
    closes: list[tuple[int, str | None]] = []
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            url = await start_trio_websocket_echo(nursery, closes)
            async with open_websocket(
                url, connect_timeout=WAIT_S, close_timeout=WAIT_S, max_message_bytes=LIMIT
            ) as ws:
                for message in MESSAGES:
                    await ws.send_message(message)
                    assert await ws.get_message() == message
                await ws.aclose(4001, "client done")
            assert ws.closed is not None and ws.closed.code == 4001
            await trio.testing.wait_all_tasks_blocked()
            assert closes == [(4001, "client done")]
            nursery.cancel_scope.cancel()


async def test_trio_websocket_server_closing_our_client() -> None:
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            url = await start_trio_websocket_echo(nursery, [])
            async with open_websocket(
                url, connect_timeout=WAIT_S, close_timeout=WAIT_S, max_message_bytes=LIMIT
            ) as ws:
                await ws.send_message(CLOSE_ME)
                try:
                    await ws.get_message()
                except ConnectionClosed as closed:
                    assert (closed.code, closed.reason) == SERVER_CLOSE
                else:
                    raise AssertionError("the server's close did not end get_message")
            nursery.cancel_scope.cancel()


async def test_our_ping_against_trio_websocket_server() -> None:
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            url = await start_trio_websocket_echo(nursery, [])
            async with (
                open_websocket(
                    url, connect_timeout=WAIT_S, close_timeout=WAIT_S, max_message_bytes=LIMIT
                ) as ws,
                trio.open_nursery() as reading,
            ):
                reading.start_soon(ws.get_message)  # the reader takes the pong in
                await ws.ping()
                reading.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


async def start_our_echo(nursery: trio.Nursery, closes: list[ConnectionClosed]) -> str:
    """A tiny server from read_upgrade_request/accept_response/WebSocket; returns its URL."""

    async def echo(stream: trio.SocketStream) -> None:
        request, leftover = await read_upgrade_request(stream)
        await stream.send_all(accept_response(request))
        ws = WebSocket(stream, is_client=False, max_message_bytes=LIMIT)
        ws.feed(leftover)
        try:
            while (message := await ws.get_message()) != CLOSE_ME:
                await ws.send_message(message)
            await ws.aclose(*SERVER_CLOSE)
        except ConnectionClosed as closed:
            closes.append(closed)
            await ws.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/echo"


async def test_trio_websocket_client_against_our_server() -> None:
    closes: list[ConnectionClosed] = []
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            url = await start_our_echo(nursery, closes)
            async with trio_websocket.open_websocket_url(url, max_message_size=LIMIT) as ws:
                for message in MESSAGES:
                    await ws.send_message(message)
                    assert await ws.get_message() == message
                await ws.ping(b"ping!")  # returns once our server's pong arrives
                await ws.aclose(4004, "client done")
            assert ws.closed is not None and ws.closed.code == 4004
            await trio.testing.wait_all_tasks_blocked()
            assert [(closed.code, closed.reason) for closed in closes] == [(4004, "client done")]
            nursery.cancel_scope.cancel()


async def test_our_server_closing_a_trio_websocket_client() -> None:
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            url = await start_our_echo(nursery, [])
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(CLOSE_ME)
                try:
                    await ws.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    assert code_and_reason(closed) == SERVER_CLOSE
                else:
                    raise AssertionError("our close did not end trio-websocket's get_message")
            nursery.cancel_scope.cancel()
