"""The broker's `/health` on a real loopback broker: any query, HEAD, and 405 for the rest."""

import json
import os
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from nacl.signing import SigningKey
from structlog.typing import EventDict
from trio_websocket import ConnectionRejected, open_websocket_url

from meshactors.broker.health import MAX_HEALTH_REQUEST_BYTES, NOT_WEBSOCKET
from meshactors.broker.limits import CONNECTION_LIMIT_RETRY_AFTER_S, MAX_REFUSING
from meshactors.broker.server import Broker
from tests.broker.support import WAIT_S, connect, hello, joined, start_broker


async def answer_to(nursery: trio.Nursery, request: bytes) -> tuple[Broker, bytes, bytes]:
    """A new broker, and the status line and the rest (headers, body) of its answer to
    `request`, read until it closes."""
    broker, url = await start_broker(nursery)
    return broker, *await answer_from(url, request)


async def answer_from(url: str, request: bytes) -> tuple[bytes, bytes]:
    """The status line and the rest of the answer of the broker at `url` to `request`."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return status_line, rest


def health_request(method: str, target: str) -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def headers_and_body(rest: bytes) -> tuple[dict[str, str], bytes]:
    """An answer's headers (names lower-cased) and its body, from what follows the status line."""
    head, _, body = rest.partition(b"\r\n\r\n")
    fields = (line.decode().partition(":") for line in head.split(b"\r\n"))
    return {name.lower(): value.strip() for name, _, value in fields}, body


async def health_of(url: str) -> dict[str, Any]:
    """The body of the broker at `url`'s answer to `GET /health`, which must be a 200."""
    status_line, rest = await answer_from(url, health_request("GET", "/health"))
    assert status_line == b"HTTP/1.1 200 OK"
    health: dict[str, Any] = json.loads(headers_and_body(rest)[1])
    return health


async def refused_twice(url: str) -> ConnectionRejected:
    """The second of two connections to the broker at `url` that it refuses, each with a 503
    that says when to retry."""
    for _ in range(2):
        with pytest.raises(ConnectionRejected) as refused:
            async with connect(url):
                pass
    assert refused.value.status_code == 503
    headers = {name.lower(): value for name, value in refused.value.headers or []}
    assert headers[b"retry-after"] == str(CONNECTION_LIMIT_RETRY_AFTER_S).encode()
    return refused.value


def refusals_logged(logs: list[EventDict]) -> list[EventDict]:
    """The `connection_refused` entries among captured log entries."""
    return [entry for entry in logs if entry["event"] == "connection_refused"]


@pytest.mark.parametrize("target", ["/health", "/health?x=1", "/health?"])
async def test_get_health_answers_with_or_without_a_query(
    nursery: trio.Nursery, target: str
) -> None:
    """A cache-buster in the query is no reason to refuse (it was an empty 400)."""
    broker, status_line, rest = await answer_to(nursery, health_request("GET", target))
    assert status_line == b"HTTP/1.1 200 OK"
    assert json.loads(headers_and_body(rest)[1])["cluster"] == "standalone"
    assert broker.figures()["health_requests"] == 1


async def test_head_health_has_the_head_alone(nursery: trio.Nursery) -> None:
    _, status_line, rest = await answer_to(nursery, health_request("HEAD", "/health"))
    assert status_line == b"HTTP/1.1 200 OK"
    headers, body = headers_and_body(rest)
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) > 0  # what a GET would carry; none follows
    assert body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
@pytest.mark.parametrize("target", ["/health", "/health?x=1"])
async def test_other_methods_on_health_are_405(
    nursery: trio.Nursery, method: str, target: str
) -> None:
    _, status_line, rest = await answer_to(nursery, health_request(method, target))
    assert status_line == b"HTTP/1.1 405 Method Not Allowed"
    headers, body = headers_and_body(rest)
    assert headers["allow"] == "GET, HEAD"
    assert "GET" in json.loads(body)["error"]


async def test_a_longer_path_is_not_health(nursery: trio.Nursery) -> None:
    """`/healthz` is handed on to the WebSocket handshake, which refuses it."""
    broker, status_line, _ = await answer_to(nursery, health_request("GET", "/healthz"))
    assert not status_line.startswith(b"HTTP/1.1 200")
    assert broker.figures()["health_requests"] == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_plain_http_to_the_websocket_path_is_told_it_wants_an_upgrade(
    nursery: trio.Nursery, method: str
) -> None:
    """A browser or `curl` on /v1 is told what the path wants (it was an empty 400)."""
    broker, status_line, rest = await answer_to(nursery, health_request(method, "/v1"))
    assert status_line == b"HTTP/1.1 426 Upgrade Required"
    headers, body = headers_and_body(rest)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["upgrade"] == "websocket"
    assert body == NOT_WEBSOCKET
    assert b"WebSocket endpoint" in body
    assert b"Upgrade: websocket" in body
    assert broker.figures()["rejected_not_websocket"] == 1


async def test_head_on_the_websocket_path_has_the_head_alone(nursery: trio.Nursery) -> None:
    _, status_line, rest = await answer_to(nursery, health_request("HEAD", "/v1"))
    assert status_line == b"HTTP/1.1 426 Upgrade Required"
    headers, body = headers_and_body(rest)
    assert int(headers["content-length"]) == len(NOT_WEBSOCKET)
    assert body == b""


async def test_an_upgrade_the_handshake_refuses_is_still_its_to_answer(
    nursery: trio.Nursery,
) -> None:
    """A request that asks the upgrade but leaves out its key goes on to the handshake, which
    refuses it (400) as it always did."""
    request = b"GET /v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    broker, status_line, _ = await answer_to(nursery, request)
    assert status_line.startswith(b"HTTP/1.1 400")
    assert broker.figures()["rejected_not_websocket"] == 0


async def test_an_upgrade_longer_than_a_health_request_still_joins(nursery: trio.Nursery) -> None:
    """The upgrade's head is read whole before the handshake; one past MAX_HEALTH_REQUEST_BYTES
    is the handshake's to read (up to 16 KiB), as before."""
    _, url = await start_broker(nursery)
    padding = [(b"x-padding", b"a" * (MAX_HEALTH_REQUEST_BYTES + 1024))]
    async with open_websocket_url(url, extra_headers=padding, connect_timeout=WAIT_S) as ws:
        await ws.send_message(hello(SigningKey.generate(), "net"))
        with trio.fail_after(WAIT_S):
            assert json.loads(await ws.get_message())["type"] == "welcome"


async def test_a_full_broker_says_so_in_its_503_its_log_and_its_health(
    nursery: trio.Nursery,
) -> None:
    """The 503 at the connection limit names the limit and has a Retry-After; the refusals are
    logged (once for a burst) and counted in /health's `figures`."""
    _, url = await start_broker(nursery, max_connections=1)
    with structlog.testing.capture_logs() as logs:
        async with connect(url):  # the broker's one place
            refused = await refused_twice(url)
    assert refused.body == b"the broker is at its connection limit (1): retry later\n"
    assert [(entry["reason"], entry["log_level"]) for entry in refusals_logged(logs)] == [
        ("connection_limit", "warning")
    ]
    health = await health_of(url)
    assert health["max_connections"] == 1
    assert health["figures"]["rejected_connection_limit"] == 2
    assert health["figures"]["closed_going_away"] == 0  # the closes by reason are there too


PAST_THE_CAP = 3 * MAX_REFUSING  # silent connections past the limit in the burst test


def open_files() -> int:
    """This process's open files (the broker runs in it)."""
    return len(os.listdir("/proc/self/fd"))


async def test_a_burst_past_the_limit_is_closed_past_the_cap_and_health_answers_after(
    nursery: trio.Nursery,
) -> None:
    """Silent connections far past max_connections: at most MAX_REFUSING of them are held in
    their handshake, the rest closed at once unanswered, so the broker holds no more than
    limit + cap of them; once they hang up /health answers again."""
    _, url = await start_broker(nursery, max_connections=2)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    before = open_files()
    burst = []
    with trio.fail_after(WAIT_S):
        for _ in range(2 + PAST_THE_CAP):
            burst.append(await trio.open_tcp_stream("127.0.0.1", port))
        await trio.testing.wait_all_tasks_blocked()  # the broker took all: its accept waits
        held_by_broker = open_files() - before - len(burst)
        assert held_by_broker <= 2 + MAX_REFUSING
        for stream in burst:
            await stream.aclose()
    figures = (await health_of(url))["figures"]
    assert figures["closed_past_refusals"] == PAST_THE_CAP - MAX_REFUSING


async def silent_connections(url: str, count: int) -> list[trio.SocketStream]:
    """`count` connections from 127.0.0.1 that say nothing, each taken in by the broker."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with trio.fail_after(WAIT_S):
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(count)]
        await trio.testing.wait_all_tasks_blocked()  # the broker took all: its accept waits
    return streams


async def test_an_address_past_its_limit_before_hello_is_refused_and_takes_no_place(
    nursery: trio.Nursery,
) -> None:
    """127.0.0.1's second connection before its hello is past its address's limit: it holds
    no place, so 127.0.0.2 still gets one, and one more from 127.0.0.1 is answered 503."""
    _, url = await start_broker(nursery, max_connections=2, max_unhelloed_per_address=1)
    silent = await silent_connections(url, 2)
    with structlog.testing.capture_logs() as logs:
        refused = await refused_twice(url)
    line = b"too many connections from this address before their hello (1): retry later\n"
    assert refused.body == line
    said = refusals_logged(logs)
    assert [(entry["reason"], entry["max_unhelloed_per_address"]) for entry in said] == [
        ("address_limit", 1)
    ]
    async with joined(url, SigningKey.generate(), "net", local_host="127.0.0.2"):
        pass  # the place 127.0.0.1's second connection did not take
    figures = (await health_of(url))["figures"]
    assert (figures["rejected_address_limit"], figures["rejected_connection_limit"]) == (2, 0)
    for stream in silent:
        await stream.aclose()


async def test_a_burst_from_one_address_leaves_the_places_to_others(
    nursery: trio.Nursery,
) -> None:
    """Silent connections from 127.0.0.1 far past its address's limit: those past MAX_REFUSING
    of them being refused are closed at once, and none keeps 127.0.0.2 from a place."""
    broker, url = await start_broker(nursery, max_connections=2, max_unhelloed_per_address=1)
    silent = await silent_connections(url, 1 + 2 * MAX_REFUSING)
    async with joined(url, SigningKey.generate(), "net", local_host="127.0.0.2"):
        pass
    assert broker.figures()["closed_past_refusals"] == MAX_REFUSING
    for stream in silent:
        await stream.aclose()


async def test_connections_admitted_by_their_hello_do_not_count_against_the_address(
    nursery: trio.Nursery,
) -> None:
    _, url = await start_broker(nursery, max_unhelloed_per_address=1)
    keys = [SigningKey.generate() for _ in range(3)]
    async with (
        joined(url, keys[0], "net"),
        joined(url, keys[1], "net"),
        joined(url, keys[2], "net") as (_, welcome),
    ):
        assert len(welcome["peers"]) == 2
