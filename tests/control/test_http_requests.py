"""HTTP requests on a real control socket: strict reading, limits, timeouts, pipelining, Expect.

What h11 reads and what the daemon adds on top (daemon/http_parse.py), seen from a client.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.control.http import HttpConnection, looks_like_http
from meshactors.control.http_parse import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADER_COUNT,
    REQUEST_TIMEOUT,
)
from meshactors.daemon.services import Services
from tests.control.httptools import RawHttp, Response, encode_request
from tests.daemon_tree import Connect


async def answered_then_closed(http: Connect, raw: bytes) -> Response:
    """The one answer to `raw`, which must come with `Connection: close` and a closed socket."""
    client = await http()
    await client.send(raw)
    response = await client.response()
    assert response.headers["connection"] == "close"
    assert response.json()["ok"] is False
    assert response.json()["error"]["message"]
    assert await client.closed()
    return response


def test_sniff_tells_http_from_json_lines() -> None:
    assert looks_like_http(b"GET / HTTP/1.1\r\n") is True
    assert looks_like_http(b"OPTIONS ") is True
    assert looks_like_http(b'{"id":1,"op":"status"}\n') is False
    assert looks_like_http(b"GETX") is False
    assert looks_like_http(b"get / HTTP/1.1") is False  # methods are case-sensitive
    assert looks_like_http(b"") is None
    assert looks_like_http(b"PO") is None
    assert looks_like_http(b"OPTIONS") is None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /v1/health\r\n\r\n", 400),  # no version
        (b"GET  /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # two spaces
        (b"GET http://x/v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # absolute form
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # asterisk form
        (b"GET /v1/health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /v1/health HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n", 400),  # not ASCII
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (
            b"GET /v1/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n\r\n",
            400,
        ),
        (
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
            400,
        ),
    ],
)
async def test_malformed_requests_are_refused(http: Connect, raw: bytes, status: int) -> None:
    assert (await answered_then_closed(http, raw)).status == status


@pytest.mark.parametrize(
    ("length", "status", "code"),
    [
        (b"abc", 400, "bad_request"),
        (b"-1", 400, "bad_request"),
        (b"1 2", 400, "bad_request"),
        (b"9" * 40, 400, "bad_request"),
        (b"1\r\nContent-Length: 2", 400, "bad_request"),  # two lengths that disagree
        (str(MAX_BODY_BYTES + 1).encode(), 413, "frame_too_large"),
    ],
)
async def test_bad_content_length_is_refused(
    http: Connect, length: bytes, status: int, code: str
) -> None:
    raw = b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}"
    response = await answered_then_closed(http, raw)
    assert (response.status, response.code) == (status, code)


@pytest.mark.parametrize(
    "coding", [b"chunked", b"gzip", b"chunked\r\nContent-Length: 2", b"chunked, chunked"]
)
async def test_any_transfer_encoding_is_411(http: Connect, coding: bytes) -> None:
    raw = b"POST /v1/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    response = await answered_then_closed(http, raw + b"2\r\n{}\r\n0\r\n\r\n")
    assert (response.status, response.code) == (411, "length_required")


async def test_a_post_without_length_or_coding_has_no_body(http: Connect) -> None:
    client = await http()
    no_body = b"POST /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
    await client.send(no_body + encode_request("GET", "/v1/health"))
    response = await client.response()
    assert (response.status, response.json()["ok"]) == (200, True)
    assert "connection" not in response.headers  # kept alive: nothing was left unread
    assert (await client.response()).status == 200  # what followed was the next request


async def test_a_head_too_large_is_431_before_it_ends(http: Connect) -> None:
    client = await http()
    await client.send(b"GET /v1/health HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)  # no end yet
    response = await client.response()
    assert (response.status, response.code) == (431, "frame_too_large")


async def test_too_many_headers_is_431(http: Connect) -> None:
    fields = b"".join(b"X-%d: y\r\n" % n for n in range(MAX_HEADER_COUNT + 1))
    raw = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    assert (await answered_then_closed(http, raw)).status == 431


async def test_what_is_not_http_is_refused_without_waiting_for_a_head(http: Connect) -> None:
    client = await http()
    await client.send(encode_request("GET", "/v1/health") + b'{"id":1,"op":"status"}\n')
    assert (await client.response()).status == 200
    refused = await client.response()  # no blank line will come: refused on the line alone
    assert (refused.status, refused.code) == (400, "bad_request")
    assert await client.closed()


async def test_a_blank_line_before_a_request_is_refused(http: Connect) -> None:
    client = await http()
    await client.send(encode_request("GET", "/v1/health") + b"\r\n" + encode_request("GET", "/"))
    assert (await client.response()).status == 200
    assert (await client.response()).status == 400
    assert await client.closed()


async def test_folded_lines_are_unfolded_not_smuggled(http: Connect) -> None:
    client = await http()
    await client.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX: a\r\n Host: y\r\n\r\n")
    assert (await client.response()).status == 200  # one Host (x); `X: a Host: y`


async def test_http10_closes_after_its_answer(http: Connect) -> None:
    for raw in (
        b"GET /v1/health HTTP/1.0\r\n\r\n",
        b"GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ):
        client = await http()
        await client.send(raw)
        response = await client.response()
        assert (response.status, response.headers["connection"]) == (200, "close")
        assert await client.closed()


async def test_pipelined_requests_are_answered_in_order(http: Connect) -> None:
    client = await http()
    await client.send(
        encode_request("POST", "/v1/no_such_op", b"{}")
        + encode_request("POST", "/v1/status", b"{}")
        + encode_request("GET", "/v1/health", Connection="close")
    )
    statuses = [(await client.response()).status for _ in range(3)]
    assert statuses == [404, 200, 200]
    assert await client.closed()


async def test_head_answers_the_head_without_a_body(http: Connect) -> None:
    client = await http()
    await client.send(encode_request("HEAD", "/v1/health") + encode_request("GET", "/v1/health"))
    status, headers = await client.head()
    assert status == 200
    assert int(headers["content-length"]) > 0  # what a GET would carry; none follows
    assert (await client.response()).status == 200


async def test_expect_continue_is_answered_before_the_body(http: Connect) -> None:
    client = await http()
    await client.send(
        b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await client.until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"{}")
    assert (await client.response()).status == 200


async def test_unknown_expectation_is_417(http: Connect) -> None:
    raw = b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: magic\r\n\r\n{}"
    assert (await answered_then_closed(http, raw)).status == 417


async def test_truncated_body_is_refused(daemon: Services) -> None:
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(str(daemon.paths.socket))
        client = RawHttp(stream)
        await client.send(b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}")
        await stream.send_eof()
        response = await client.response()
        assert (response.status, response.code) == (400, "bad_request")
        await stream.aclose()


@attrs.define
class Figures:
    """The client actor's counters, for a connection served without one."""

    requests: int = 0
    errors: int = 0


@attrs.frozen
class NoOpTable:
    """An op table with no ops: every path but /v1/health is a 404, which needs no store."""

    get_paths: dict[str, str] = attrs.field(factory=dict)
    post_paths: dict[str, str] = attrs.field(factory=dict)
    ops: dict[str, object] = attrs.field(factory=dict)


@attrs.frozen
class NoOpServices:
    """The services a NoRoutes session reaches: only its op table."""

    ops: NoOpTable = attrs.field(factory=NoOpTable)


@attrs.frozen
class NoRoutes:
    """A session stand-in for the timeout tests: an in-process daemon's store thread cannot
    run under MockClock, and these requests reach no op (a 404 at most)."""

    client_id: str = "c1"
    services: NoOpServices = attrs.field(factory=NoOpServices)


async def served_alone(nursery: trio.Nursery) -> RawHttp:
    """An HttpConnection on a memory stream pair, served in `nursery`; the client's end."""
    server, client = trio.testing.memory_stream_pair()
    session: Any = NoRoutes()
    connection = HttpConnection(server, session, Figures(), server.send_all)

    async def serve_then_close() -> None:  # as the client actor closes its socket
        async with server:
            await connection.serve()

    nursery.start_soon(serve_then_close)
    return RawHttp(client)


async def test_an_idle_connection_is_closed_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        client = await served_alone(nursery)
        assert (await client.request("GET", "/v1/nowhere")).status == 404  # kept alive
        start = trio.current_time()
        assert await client.closed()  # no answer: the connection just ends
        assert trio.current_time() - start == pytest.approx(IDLE_TIMEOUT)


async def test_a_connection_that_never_sends_is_closed_at_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Until a connection was served, it gets no idle wait: silent ones hold no place (on
    the TCP listener, where anyone local may connect) for longer than a request may take."""
    async with trio.open_nursery() as nursery:
        client = await served_alone(nursery)
        start = trio.current_time()
        assert await client.closed()  # no answer: the connection just ends
        assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)


async def test_a_slow_request_is_408(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        client = await served_alone(nursery)
        await client.send(b"GET /v1/health HTTP/1.1\r\n")  # and never the rest
        start = trio.current_time()
        response = await client.response()
        assert (response.status, response.code) == (408, "request_timeout")
        assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)
        assert await client.closed()
