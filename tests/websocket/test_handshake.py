"""The HTTP upgrade: reading a client's request, refusing bad ones, and checking the 101."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.websocket.handshake import (
    MAX_HEAD_BYTES,
    HandshakeFailed,
    UpgradeRequest,
    accept_response,
    accept_token,
    read_upgrade_request,
    reject_response,
    upgrade_client,
)
from tests.websocket.support import WAIT_S

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's sample nonce
HEADERS = {
    "Host": "example.test",
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def request(
    line: str = "GET /v1?x=1 HTTP/1.1", replace: dict[str, str | None] | None = None
) -> bytes:
    """An upgrade request with some headers replaced; a header replaced by None is left out."""
    headers = {**HEADERS, **(replace or {})}
    lines = [line, *(f"{name}: {value}" for name, value in headers.items() if value is not None)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_request(data: bytes, *, eof: bool = False) -> tuple[UpgradeRequest, bytes]:
    """Run read_upgrade_request on a stream that received `data` (then EOF if asked)."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(data)
    if eof:
        await client.send_stream.aclose()
    with trio.fail_after(WAIT_S):
        return await read_upgrade_request(server)


def test_accept_token_matches_the_rfc_example() -> None:
    assert accept_token(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


async def test_valid_request_is_read_with_its_leftover() -> None:
    upgrade, leftover = await read_request(request() + b"\x81\x02hi")
    assert (upgrade.path, upgrade.key) == ("/v1?x=1", KEY)
    assert upgrade.headers["host"] == "example.test"
    assert leftover == b"\x81\x02hi"
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in accept_response(upgrade)


async def test_request_arriving_in_small_pieces_is_read() -> None:
    client, server = trio.testing.memory_stream_pair()
    data = request()

    async def trickle() -> None:
        for start in range(0, len(data), 7):
            await client.send_all(data[start : start + 7])
            await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        with trio.fail_after(WAIT_S):
            upgrade, leftover = await read_upgrade_request(server)
    assert (upgrade.key, leftover) == (KEY, b"")


@pytest.mark.parametrize(
    "line", ["POST /v1 HTTP/1.1", "GET /v1 HTTP/1.0", "GET /v1", "", "hello there"]
)
async def test_bad_request_line_is_refused(line: str) -> None:
    with pytest.raises(HandshakeFailed, match="not a WebSocket upgrade"):
        await read_request(request(line))


@pytest.mark.parametrize(
    "replace",
    [
        {"Upgrade": None},
        {"Upgrade": "h2c"},
        {"Connection": None},
        {"Connection": "keep-alive"},
        {"Sec-WebSocket-Version": None},
        {"Sec-WebSocket-Version": "8"},
        {"Sec-WebSocket-Key": None},
        {"Sec-WebSocket-Key": ""},
    ],
)
async def test_missing_or_wrong_upgrade_headers_are_refused(replace: dict[str, str | None]) -> None:
    with pytest.raises(HandshakeFailed, match="upgrade headers"):
        await read_request(request(replace=replace))


async def test_malformed_header_line_is_refused() -> None:
    data = request().replace(b"Host: example.test", b"no colon here")
    with pytest.raises(HandshakeFailed, match="malformed header line"):
        await read_request(data)


async def test_endless_header_block_is_refused() -> None:
    data = request()[:-2] + b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1)
    with pytest.raises(HandshakeFailed, match="header block over"):
        await read_request(data)


async def test_complete_header_block_over_the_limit_is_refused() -> None:
    padded = request(replace={"X-Pad": "a" * (MAX_HEAD_BYTES + 100)})
    with pytest.raises(HandshakeFailed, match="header block over"):
        await read_request(padded)


async def test_eof_mid_header_is_refused() -> None:
    with pytest.raises(HandshakeFailed, match="closed during the upgrade"):
        await read_request(request()[:40], eof=True)


async def test_key_that_is_not_a_16_byte_nonce_is_refused() -> None:
    for key in ("é" * 24, "not base64!", "c2hvcnQ="):
        with pytest.raises(HandshakeFailed, match="Sec-WebSocket-Key"):
            await read_request(request(replace={"Sec-WebSocket-Key": key}))


def test_reject_response_is_plain_http() -> None:
    assert reject_response(404).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert reject_response(418).startswith(b"HTTP/1.1 418 Error\r\n")
    assert reject_response(503).endswith(b"Connection: close\r\n\r\n")


async def test_upgrade_client_completes_and_returns_leftover() -> None:
    client, server = trio.testing.memory_stream_pair()

    async def serve() -> None:
        upgrade, _ = await read_upgrade_request(server)
        assert (upgrade.path, upgrade.headers["host"]) == ("/v1", "example.test:80")
        await server.send_all(accept_response(upgrade) + b"tail")

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            assert await upgrade_client(client, "example.test:80", "/v1") == b"tail"


async def client_answered(answer: bytes) -> bytes:
    """upgrade_client against a server whose answer, whatever was asked, is `answer`."""
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(answer)
    with trio.fail_after(WAIT_S):
        return await upgrade_client(client, "example.test:80", "/v1")


async def test_upgrade_client_refuses_a_non_101_status() -> None:
    with pytest.raises(HandshakeFailed, match="upgrade refused"):
        await client_answered(reject_response(404))


async def test_upgrade_client_refuses_a_wrong_accept_token() -> None:
    wrong = accept_response(UpgradeRequest("/v1", {}, KEY))  # answers some other key
    with pytest.raises(HandshakeFailed, match="wrong Sec-WebSocket-Accept"):
        await client_answered(wrong)


async def test_upgrade_client_refuses_a_101_without_the_upgrade_headers() -> None:
    answer = (
        f"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept_token(KEY)}\r\n\r\n"
    )
    with pytest.raises(HandshakeFailed, match="101 without Upgrade"):
        await client_answered(answer.encode())


async def test_upgrade_client_refuses_a_garbled_status_line() -> None:
    with pytest.raises(HandshakeFailed, match="upgrade refused"):
        await client_answered(b"SSH-2.0-OpenSSH\r\n\r\n")
