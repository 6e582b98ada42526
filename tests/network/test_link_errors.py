"""Link failures classified from what really happens: a refused port, a name that does not
resolve, a wrong path on a real broker, a refused hello, a wss:// URL to a plain port, a
certificate not trusted or for another address; and an error retrying cannot heal waits the
longest backoff at once."""

from __future__ import annotations

import random
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.actors import Inbox, Node, run_root
from meshactors.clock import wall_ms
from meshactors.network import link as link_module
from meshactors.network.link import (
    BACKOFF_CAP,
    Link,
    LinkEvent,
    backoff_delay,
    open_broker_websocket,
)
from meshactors.network.link_errors import LinkError, LinkErrorKind, classify
from meshactors.wire.broker import build_hello
from tests.broker.support import connect, start_broker
from tests.network.linksink import LinkEventRecorder
from tests.network.tlsserver import TEST_CA, handshake_only, serve_tls

WAIT = 10


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def failure_of(url: str, then: Callable[[Any], Awaitable[None]] | None = None) -> LinkError:
    """Connect to `url` as the link does (and run `then` on the socket); the classified error."""
    with trio.fail_after(WAIT):
        try:
            async with open_broker_websocket(url) as ws:
                if then is not None:
                    await then(ws)
        except Exception as error:
            return classify(error, url, welcomed=False)
    raise AssertionError(f"{url} did not fail")


async def test_nothing_listening_is_refused() -> None:
    error = await failure_of(f"ws://127.0.0.1:{closed_port()}/v1")
    assert error.kind is LinkErrorKind.REFUSED and error.heals_by_retrying


async def test_a_name_that_does_not_resolve_is_dns() -> None:
    error = await failure_of("ws://no-such-broker.invalid/v1")
    assert (error.kind, error.reason) == (
        LinkErrorKind.DNS,
        "no-such-broker.invalid does not resolve",
    )


async def test_a_wrong_path_is_not_found_and_does_not_heal(nursery: trio.Nursery) -> None:
    _, url = await start_broker(nursery)
    error = await failure_of(url.replace("/v1", "/v2"))
    assert error.kind is LinkErrorKind.NOT_FOUND and "404 for /v2" in error.reason
    assert not error.heals_by_retrying


async def test_a_broker_at_its_connection_limit_is_busy_and_its_link_joins_once_room_frees(
    nursery: trio.Nursery,
) -> None:
    """The broker's 503 heals by retrying: the link backs off as usual, not the longest wait."""
    _, url = await start_broker(nursery, max_connections=1)
    heard = LinkEventRecorder()
    link = Link("n", [url], SigningKey.generate(), heard)
    async with trio.open_nursery() as linked:
        async with connect(url):  # the broker's one place
            error = await failure_of(url)
            assert error.kind is LinkErrorKind.BUSY and "503 for /v1" in error.reason
            assert error.heals_by_retrying
            await linked.start(run_root, link, Node(name="link", kind="link"))
            with trio.fail_after(WAIT):
                assert (await heard.first_error()).kind is LinkErrorKind.BUSY
        with trio.fail_after(WAIT):  # the first retries wait a fraction of a second, not 30 s
            await heard.up()
        linked.cancel_scope.cancel()


async def test_a_refused_hello_is_rejected_with_the_brokers_reason(nursery: trio.Nursery) -> None:
    _, url = await start_broker(nursery)
    stale = build_hello(SigningKey.generate(), "n", "daemon", now_ms=wall_ms() - 3_600_000)

    async def hello(ws: Any) -> None:
        await ws.send_message(stale)
        await ws.get_message()

    error = await failure_of(url, hello)
    assert error.kind is LinkErrorKind.REJECTED and "stale_timestamp" in error.reason
    assert not error.heals_by_retrying


async def first_link_error(url: str) -> LinkError:
    """The error a link to `url` reports for its first failed attempt, waited for past
    CONNECT_TIMEOUT: a failure the link misses ends as its `timeout`, not the test's."""
    heard = LinkEventRecorder()
    link = Link("n", [url], SigningKey.generate(), heard)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, link, Node(name="link", kind="link"))
        with trio.fail_after(2 * link_module.CONNECT_TIMEOUT):
            error = await heard.first_error()
        nursery.cancel_scope.cancel()
    return error


async def test_wss_to_a_plain_port_is_tls_and_says_so(nursery: trio.Nursery) -> None:
    """The broker answers the TLS hello with HTTP: the handshake fails at once (it was hidden
    in trio-websocket's reader, and the attempt ended as a `timeout`)."""
    _, url = await start_broker(nursery)
    wss = url.replace("ws://", "wss://")
    error = await first_link_error(wss)
    host = wss.split("/")[2]
    assert (error.kind, error.reason) == (
        LinkErrorKind.TLS,
        f"TLS with {host} failed: it does not speak TLS (a wss:// URL to a plain ws:// port?)",
    )
    assert error.heals_by_retrying


async def test_a_certificate_no_one_trusts_is_tls(nursery: trio.Nursery) -> None:
    port = await serve_tls(nursery, handshake_only)
    error = await first_link_error(f"wss://127.0.0.1:{port}/v1")
    assert (error.kind, error.reason) == (
        LinkErrorKind.TLS,
        f"TLS with 127.0.0.1:{port} failed: its certificate was refused: "
        "unable to get local issuer certificate",
    )


async def test_a_trusted_certificate_for_another_address_is_tls(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate is for localhost and 127.0.0.1; the server is at 127.0.0.2."""
    monkeypatch.setenv("SSL_CERT_FILE", str(TEST_CA))  # the default context reads it each time
    port = await serve_tls(nursery, handshake_only, host="127.0.0.2")
    error = await first_link_error(f"wss://127.0.0.2:{port}/v1")
    assert (error.kind, error.reason) == (
        LinkErrorKind.TLS,
        f"TLS with 127.0.0.2:{port} failed: its certificate was refused: "
        "IP address mismatch, certificate is not valid for '127.0.0.2'.",
    )


@pytest.mark.parametrize(
    ("kind", "waits_longest"),
    [
        (LinkErrorKind.NOT_FOUND, True),
        (LinkErrorKind.REJECTED, True),
        (LinkErrorKind.REFUSED, False),
        (LinkErrorKind.BUSY, False),
    ],
)
def test_an_error_retrying_cannot_heal_waits_the_longest_backoff(
    kind: LinkErrorKind, waits_longest: bool
) -> None:
    link = Link(
        "n", ["ws://x/v1"], SigningKey.generate(), Inbox[LinkEvent](1), rng=random.Random(1)
    )
    link.last_error = LinkError(kind, "why")
    assert (link._backoff() == BACKOFF_CAP) is waits_longest
    if not waits_longest:
        link.rng = random.Random(1)
        assert link._backoff() == backoff_delay(0, random.Random(1))


@attrs.frozen
class PublishedRecorder:
    """Stands for the event hub: keeps what the link publishes (the hub's own tests are in
    tests/control; here virtual time must not race its store thread)."""

    published: list[tuple[str, dict[str, Any]]]

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.published.append((kind, data))


async def test_a_lasting_error_is_published_once_however_often_it_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    published: list[tuple[str, dict[str, Any]]] = []
    hub = PublishedRecorder(published)
    url = f"ws://127.0.0.1:{closed_port()}/v1"
    link = Link("n", [url], SigningKey.generate(), LinkEventRecorder(), events=hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, link, Node(name="link", kind="link"))
        await trio.sleep(60)  # virtual time: several refused attempts
        nursery.cancel_scope.cancel()
    assert link.failures >= 5
    assert [(kind, data["error"]["kind"]) for kind, data in published] == [
        ("network_link_error", "refused")
    ]
    reason = f"nothing listens on {url.removeprefix('ws://').removesuffix('/v1')}"
    assert link.figures()["last_error"] == {"kind": "refused", "reason": reason}


async def serve_plain(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Any]) -> int:
    """Serve `handler` over plain TCP on a free loopback port; returns the port."""
    listeners: list[trio.SocketListener] = await nursery.start(
        partial(trio.serve_tcp, host="127.0.0.1"), handler, 0
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_a_server_silent_in_the_tls_handshake_is_a_timeout_naming_that_step(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    # Virtual time jumps only once nothing has run for a while of real time, so the loopback
    # connection is made by then whatever the machine's load.
    mock_clock.autojump_threshold = 0.05

    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    port = await serve_plain(nursery, silent)
    error = await first_link_error(f"wss://127.0.0.1:{port}/v1")
    assert (error.kind, error.reason) == (LinkErrorKind.TIMEOUT, "no TLS handshake in time")


async def test_a_server_closing_in_the_tls_handshake_is_tls_and_says_so(
    nursery: trio.Nursery,
) -> None:
    async def closing(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some()  # the client's hello read: the close is no reset

    port = await serve_plain(nursery, closing)
    error = await first_link_error(f"wss://127.0.0.1:{port}/v1")
    assert (error.kind, error.reason) == (
        LinkErrorKind.TLS,
        f"TLS with 127.0.0.1:{port} failed: it closed the connection during the handshake",
    )
