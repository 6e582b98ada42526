"""TLS servers on loopback for the link's wss:// tests, showing the committed certificate of
tests/network/tls/ (its README says why it is committed and how it was made): one that only
answers the handshake, and one that ends TLS in front of a plain broker."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

CERTIFICATES = Path(__file__).parent / "tls"
TEST_CA = CERTIFICATES / "ca.pem"  # signed the server's certificate; no system trusts it

TLSHandler = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


async def serve_tls(nursery: trio.Nursery, handler: TLSHandler, host: str = "127.0.0.1") -> int:
    """Serve `handler` over TLS (the certificate for localhost and 127.0.0.1) on a free port
    of `host`, in `nursery`; returns the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERTIFICATES / "localhost.pem", CERTIFICATES / "localhost-key.pem")
    listeners: list[trio.SSLListener[trio.SocketStream]] = await nursery.start(
        partial(trio.serve_ssl_over_tcp, host=host, https_compatible=True), handler, 0, context
    )
    transport = listeners[0].transport_listener
    assert isinstance(transport, trio.SocketListener)
    port: int = transport.socket.getsockname()[1]
    return port


async def handshake_only(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Answer the handshake, then close: whether the client trusts the certificate is the
    test."""
    with contextlib.suppress(trio.BrokenResourceError):  # the client refused it
        await stream.do_handshake()


def forwarding_to(port: int) -> TLSHandler:
    """A handler passing each connection's bytes, TLS removed, to 127.0.0.1:`port` and back."""

    async def forward(client: trio.SSLStream[trio.SocketStream]) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", port)
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, client, server, nursery.cancel_scope)
            nursery.start_soon(_pipe, server, client, nursery.cancel_scope)

    return forward


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream, both: trio.CancelScope) -> None:
    """Copy `source` to `sink`; when `source` ends, the connection ends both ways."""
    with contextlib.suppress(trio.BrokenResourceError):  # either side went away
        async for chunk in source:
            await sink.send_all(chunk)
    both.cancel()
