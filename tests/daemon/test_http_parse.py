"""The HTTP request reader on memory streams: strict parsing, limits, timeouts, pipelining."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.daemon.http import looks_like_http
from meshactors.daemon.http_errors import HttpError
from meshactors.daemon.http_parse import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADER_COUNT,
    REQUEST_TIMEOUT,
    RequestHead,
    RequestReader,
    parse_head,
)


def pair() -> tuple[RequestReader, trio.abc.Stream]:
    server, client = trio.testing.memory_stream_pair()
    return RequestReader(server), client


async def read_one(data: bytes) -> tuple[RequestHead, bytes]:
    reader, client = pair()
    await client.send_all(data)
    head = await reader.read_head()
    assert head is not None
    return head, await reader.read_body(head)


async def refusal(data: bytes) -> HttpError:
    with pytest.raises(HttpError) as caught:
        await read_one(data)
    return caught.value


def test_sniff_tells_http_from_json_lines() -> None:
    assert looks_like_http(b"GET / HTTP/1.1\r\n") is True
    assert looks_like_http(b"OPTIONS ") is True
    assert looks_like_http(b'{"id":1,"op":"status"}\n') is False
    assert looks_like_http(b"GETX") is False
    assert looks_like_http(b"get / HTTP/1.1") is False  # methods are case-sensitive
    assert looks_like_http(b"") is None
    assert looks_like_http(b"PO") is None
    assert looks_like_http(b"OPTIONS") is None


async def test_reads_a_request_with_query_headers_and_body() -> None:
    head, body = await read_one(
        b"POST /v1/send?x=1&y=a%20b HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 2\r\nX-Thing:   spaced  \r\n\r\n{}"
    )
    assert (head.method, head.path, head.version) == ("POST", "/v1/send", "HTTP/1.1")
    assert head.query == (("x", "1"), ("y", "a b"))
    assert head.headers["x-thing"] == "spaced"
    assert body == b"{}"
    assert head.keep_alive


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /\r\n\r\n", 400),  # no version
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # two spaces
        (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # absolute form
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # not a token
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"GET /?a=%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # not UTF-8
    ],
)
async def test_malformed_heads_are_refused(raw: bytes, status: int) -> None:
    error = await refusal(raw)
    assert error.status == status
    assert error.message


@pytest.mark.parametrize(
    ("length", "status", "code"),
    [
        (b"abc", 400, "bad_request"),
        (b"-1", 400, "bad_request"),
        (b"1 2", 400, "bad_request"),
        (b"9" * 40, 400, "bad_request"),
        (str(MAX_BODY_BYTES + 1).encode(), 413, "frame_too_large"),
    ],
)
async def test_bad_content_length_is_refused(length: bytes, status: int, code: str) -> None:
    error = await refusal(
        b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
    )
    assert (error.status, error.code) == (status, code)


async def test_duplicate_content_length_is_refused() -> None:
    error = await refusal(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    )
    assert error.status == 400


async def test_chunked_upload_needs_a_length() -> None:
    error = await refusal(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert (error.status, error.code) == (411, "length_required")


@pytest.mark.parametrize("start", [b"GET / HTTP/1.1\n", b'{"id":1,"op":"status"}\r\n'])
async def test_a_bad_first_line_is_refused_before_the_head_ends(start: bytes) -> None:
    reader, client = pair()
    await client.send_all(start)  # and nothing more: no blank line will come
    with pytest.raises(HttpError) as caught:
        await reader.read_head()
    assert caught.value.status == 400


async def test_head_too_large_is_431_without_reading_it_all() -> None:
    reader, client = pair()
    await client.send_all(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)
    with pytest.raises(HttpError) as caught:
        await reader.read_head()
    assert (caught.value.status, caught.value.code) == (431, "frame_too_large")


async def test_too_many_headers_is_431() -> None:
    fields = b"".join(b"X-%d: y\r\n" % n for n in range(MAX_HEADER_COUNT + 1))
    error = await refusal(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert error.status == 431


async def test_repeated_plain_headers_are_joined() -> None:
    head, _ = await read_one(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: a\r\nAccept: b\r\n\r\n")
    assert head.headers["accept"] == "a, b"


async def test_connection_close_and_http10_end_keep_alive() -> None:
    head, _ = await read_one(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not head.keep_alive
    head, _ = await read_one(b"GET / HTTP/1.0\r\n\r\n")
    assert not head.keep_alive
    head, _ = await read_one(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert head.keep_alive


async def test_pipelined_requests_and_stray_blank_lines() -> None:
    reader, client = pair()
    await client.send_all(
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first = await reader.read_head()
    assert first is not None
    assert await reader.read_body(first) == b"abc"
    second = await reader.read_head()
    assert second is not None
    assert second.path == "/b"
    await client.aclose()
    assert await reader.read_head() is None


async def test_expect_continue_is_answered_before_the_body() -> None:
    reader, client = pair()
    await client.send_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    head = await reader.read_head()
    assert head is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.read_body, head)
        assert await client.receive_some(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send_all(b"{}")


async def test_unknown_expectation_is_417() -> None:
    error = await refusal(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nExpect: magic\r\n\r\n"
    )
    assert error.status == 417


async def test_truncated_body_is_refused() -> None:
    reader, client = pair()
    await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    await client.aclose()
    head = await reader.read_head()
    assert head is not None
    with pytest.raises(HttpError):
        await reader.read_body(head)


async def test_idle_connection_ends_quietly(autojump_clock: trio.testing.MockClock) -> None:
    reader, _client = pair()
    start = trio.current_time()
    assert await reader.read_head() is None
    assert trio.current_time() - start == pytest.approx(IDLE_TIMEOUT)


async def test_slow_request_is_408(autojump_clock: trio.testing.MockClock) -> None:
    reader, client = pair()
    await client.send_all(b"GET / HTTP/1.1\r\n")  # and never the rest
    start = trio.current_time()
    with pytest.raises(HttpError) as caught:
        await reader.read_head()
    assert (caught.value.status, caught.value.code) == (408, "request_timeout")
    assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)


def test_parse_head_splits_path_and_query() -> None:
    head = parse_head(b"GET /v1/peers?all=1&network= HTTP/1.1\r\nHost: x")
    assert (head.path, head.query) == ("/v1/peers", (("all", "1"), ("network", "")))
    assert head.content_length is None
