"""Plain HTTP on a real loopback broker: `/health` (any query, HEAD, and 405 for the rest), and
a clear answer, never wsproto's empty 400, to every other request the handshake would refuse."""

import json
import os
import socket
import struct
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from nacl.signing import SigningKey
from structlog.typing import EventDict
from trio_websocket import ConnectionRejected, open_websocket_url

from meshactors.broker.health import (
    BAD_REQUEST,
    HEAD_TOO_LONG,
    MAX_REQUEST_HEAD_BYTES,
    NOT_FOUND,
    NOT_WEBSOCKET,
    UNDECODABLE_UPGRADE,
    WEBSOCKET_METHOD_NOT_ALLOWED,
)
from meshactors.broker.limits import CONNECTION_LIMIT_RETRY_AFTER_S, MAX_REFUSING
from meshactors.broker.server import Broker
from tests.broker.support import WAIT_S, closed_with, connect, hello, joined, start_broker


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


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
@pytest.mark.parametrize("target", ["/healthz", "/", "/v1/", "/v1?x=1", "/v2", "*"])
async def test_another_path_is_told_it_is_not_found(
    nursery: trio.Nursery, method: str, target: str
) -> None:
    """`/healthz`, `/` and the rest are a 404 saying where the broker answers (they were an
    empty 400)."""
    broker, status_line, rest = await answer_to(nursery, health_request(method, target))
    assert status_line == b"HTTP/1.1 404 Not Found"
    headers, body = headers_and_body(rest)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert int(headers["content-length"]) == len(NOT_FOUND)
    assert body == (b"" if method == "HEAD" else NOT_FOUND)
    assert (broker.figures()["rejected_path"], broker.figures()["health_requests"]) == (1, 0)


async def test_plain_http_to_the_websocket_path_is_told_it_wants_an_upgrade(
    nursery: trio.Nursery,
) -> None:
    """A browser or `curl` on /v1 is told what the path wants (it was an empty 400)."""
    broker, status_line, rest = await answer_to(nursery, health_request("GET", "/v1"))
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


UPGRADE_FIELDS = (
    "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


UPGRADE_REQUEST = f"GET /v1 HTTP/1.1\r\n{UPGRADE_FIELDS}\r\n".encode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
@pytest.mark.parametrize("fields", ["Host: x\r\n", UPGRADE_FIELDS])
async def test_other_methods_on_the_websocket_path_are_405(
    nursery: trio.Nursery, method: str, fields: str
) -> None:
    """With the upgrade's headers or without (they were an empty 400 or a 426)."""
    request = f"{method} /v1 HTTP/1.1\r\n{fields}\r\n".encode()
    broker, status_line, rest = await answer_to(nursery, request)
    assert status_line == b"HTTP/1.1 405 Method Not Allowed"
    headers, body = headers_and_body(rest)
    assert headers["allow"] == "GET, HEAD"  # HEAD is answered too: the 426's head
    assert body == WEBSOCKET_METHOD_NOT_ALLOWED
    assert broker.figures()["rejected_not_websocket"] == 1


@pytest.mark.parametrize(
    ("dropped", "replaced_by", "status", "named"),
    [
        ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 400, b"Sec-WebSocket-Key"),
        ("Sec-WebSocket-Version: 13\r\n", "", 400, b"Sec-WebSocket-Version"),
        ("Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Version: 8\r\n", 426, b"Version"),
        ("Connection: Upgrade\r\n", "Connection: keep-alive\r\n", 400, b"Connection: Upgrade"),
        ("Upgrade: websocket\r\n", "Upgrade: websocket, h2c\r\n", 400, b"Upgrade: websocket"),
    ],
)
async def test_a_broken_upgrade_is_told_what_is_wrong(
    nursery: trio.Nursery, dropped: str, replaced_by: str, status: int, named: bytes
) -> None:
    """wsproto's refusal, with its status and headers (a 426 names the version it takes), and
    a line naming what it found wrong and what an upgrade needs (it was an empty 400)."""
    fields = UPGRADE_FIELDS.replace(dropped, replaced_by)
    request = f"GET /v1 HTTP/1.1\r\n{fields}\r\n".encode()
    broker, status_line, rest = await answer_to(nursery, request)
    assert status_line.startswith(f"HTTP/1.1 {status} ".encode())
    headers, body = headers_and_body(rest)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body.startswith(b"/v1 cannot take this WebSocket upgrade: ")
    assert named in body.partition(b"(it takes")[0]
    assert b"Sec-WebSocket-Version: 13" in body
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    figures = broker.figures()
    assert (figures["rejected_bad_request"], figures["rejected_not_websocket"]) == (1, 0)


@pytest.mark.parametrize(
    "field", [b"Connection: Upgrade, \xb1", b"Sec-WebSocket-Protocol: \xff", b"Host: xn--zz"]
)
async def test_an_upgrade_with_a_header_wsproto_cannot_decode_is_a_400(
    nursery: trio.Nursery, field: bytes
) -> None:
    """wsproto decodes these itself; what is not text failed trio-websocket's reader (a
    connection error, and no answer)."""
    fields = UPGRADE_FIELDS.replace("Host: x\r\n", "").encode()
    host = b"" if field.startswith(b"Host") else b"Host: x\r\n"
    request = b"GET /v1 HTTP/1.1\r\n" + host + fields + field + b"\r\n\r\n"
    broker, status_line, rest = await answer_to(nursery, request)
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert UNDECODABLE_UPGRADE.encode() in headers_and_body(rest)[1]
    figures = broker.figures()
    assert (figures["rejected_bad_request"], figures["connection_errors"]) == (1, 0)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /v1 HTTP/1.1\r\n\r\n",  # no Host
        b"GET /health HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS-ish
    ],
)
async def test_a_request_h11_cannot_read_is_a_400_saying_so(
    nursery: trio.Nursery, request_bytes: bytes
) -> None:
    broker, status_line, rest = await answer_to(nursery, request_bytes)
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert headers_and_body(rest)[1] == BAD_REQUEST
    assert broker.figures()["rejected_bad_request"] == 1


async def test_a_request_head_past_its_cap_is_a_431_saying_so(nursery: trio.Nursery) -> None:
    """One byte past the cap, unfinished: the broker reads all of it (what it leaves unread
    when it closes would reset the connection, the answer with it)."""
    start = b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Padding: "
    request = start + b"a" * (MAX_REQUEST_HEAD_BYTES + 1 - len(start))
    _, status_line, rest = await answer_to(nursery, request)
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert headers_and_body(rest)[1] == HEAD_TOO_LONG


async def test_an_upgrade_up_to_the_head_cap_still_joins(nursery: trio.Nursery) -> None:
    """The upgrade's head is read whole and checked before the handshake, which reads it again:
    a long one (as the handshake took before) still joins."""
    _, url = await start_broker(nursery)
    padding = [(b"x-padding", b"a" * (MAX_REQUEST_HEAD_BYTES - 1024))]
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


async def _end_before_hello(url: str, sent: bytes, reset: bool) -> None:
    """A connection from 127.0.0.1 that sends `sent`, then hangs up (a reset, or an EOF after
    which it reads what the broker answers) without a hello."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(sent)
    with trio.fail_after(WAIT_S):
        if reset:
            await trio.testing.wait_all_tasks_blocked()  # the broker read what was sent
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            await stream.send_eof()
            while await stream.receive_some():
                pass
    await stream.aclose()


@pytest.mark.parametrize(
    ("sent", "reset"),
    [
        pytest.param(b"", False, id="nothing"),
        pytest.param(b"GET /v1 HTTP/1.1\r\n", True, id="reset-mid-request"),
        pytest.param(UPGRADE_REQUEST, False, id="upgraded-no-hello"),
        pytest.param(UPGRADE_REQUEST, True, id="upgraded-reset"),
        pytest.param(health_request("GET", "/health"), False, id="health"),
        pytest.param(b"NOT HTTP\r\n\r\n", False, id="refused-400"),
    ],
)
async def test_a_connection_ended_before_its_hello_gives_its_address_its_place_back(
    nursery: trio.Nursery, sent: bytes, reset: bool
) -> None:
    """With one connection before hello allowed per address, each ending leaves room for the
    next from the same address, however it ended."""
    broker, url = await start_broker(nursery, max_unhelloed_per_address=1)
    for _ in range(2):
        await _end_before_hello(url, sent, reset)
        with trio.fail_after(WAIT_S):
            while broker.figures()["connections"]:
                await trio.testing.wait_all_tasks_blocked()
    for _ in range(2):
        async with connect(url) as ws:
            await ws.send_message("{not a hello")
            await closed_with(ws)
    async with joined(url, SigningKey.generate(), "net"):
        pass
    assert broker.figures()["rejected_address_limit"] == 0
