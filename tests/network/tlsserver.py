"""TLS servers on loopback for the link's wss:// tests, showing the committed certificate of
tests/network/tls/ (its README says why it is committed and how it was made): one that only
answers the handshake."""

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
    port: int = listeners[0].transport_listener.socket.getsockname()[1]
    return port


async def handshake_only(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Answer the handshake, then close: whether the client trusts the certificate is the
    test."""
    with contextlib.suppress(trio.BrokenResourceError):  # the client refused it
        await stream.do_handshake()
