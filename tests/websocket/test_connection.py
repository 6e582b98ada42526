"""One WebSocket against a hand-driven peer: messages, fragments, control frames, closing,
and writers that block or are cancelled."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from meshactors.websocket import ConnectionClosed, WebSocket
from meshactors.websocket.frames import Frame, Opcode, encode_frame
from tests.websocket.support import WAIT_S, RawPeer, close_payload, tcp_pair

MAX = 1000  # max_message_bytes of the WebSocket under test

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


def server_and_peer(
    pair: StreamPair = trio.testing.memory_stream_pair,
) -> tuple[WebSocket, RawPeer]:
    """A server-side WebSocket and the raw client peer at the other end of `pair`."""
    ours, theirs = pair()
    return WebSocket(ours, is_client=False, max_message_bytes=MAX), RawPeer(theirs, is_client=True)


async def closed_by(ws: WebSocket) -> ConnectionClosed:
    """The ConnectionClosed that get_message ends with."""
    with trio.fail_after(WAIT_S), pytest.raises(ConnectionClosed) as raised:
        await ws.get_message()
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.reason) == (raised.value.code, raised.value.reason)
    return raised.value


async def test_messages_both_ways_text_as_str_binary_as_bytes() -> None:
    ws, peer = server_and_peer()
    await peer.send(Opcode.TEXT, "grüß".encode())
    await peer.send(Opcode.BINARY, b"\x00\xff")
    with trio.fail_after(WAIT_S):
        assert await ws.get_message() == "grüß"
        assert await ws.get_message() == b"\x00\xff"
    await ws.send_message("hé")
    await ws.send_message(b"\x01")
    assert await peer.receive() == Frame(Opcode.TEXT, True, "hé".encode())
    assert await peer.receive() == Frame(Opcode.BINARY, True, b"\x01")


async def test_bytes_fed_after_the_upgrade_are_read_first() -> None:
    ws, peer = server_and_peer()
    ws.feed(encode_frame(Opcode.TEXT, b"early", mask=True))
    await peer.send(Opcode.TEXT, b"late")
    with trio.fail_after(WAIT_S):
        assert [await ws.get_message(), await ws.get_message()] == ["early", "late"]


async def test_fragmented_message_is_assembled_around_a_ping() -> None:
    ws, peer = server_and_peer()
    await peer.send(Opcode.TEXT, b"hello w\xc3", fin=False)  # splits the UTF-8 of "ö"
    await peer.send(Opcode.PING, b"mid")
    await peer.send(Opcode.CONTINUATION, b"\xb6", fin=False)
    await peer.send(Opcode.CONTINUATION, b"rld", fin=True)
    with trio.fail_after(WAIT_S):
        assert await ws.get_message() == "hello wörld"
    assert await peer.receive() == Frame(Opcode.PONG, True, b"mid")


async def test_fragmented_binary_message_up_to_the_limit_is_accepted() -> None:
    ws, peer = server_and_peer()
    for part in range(4):
        await peer.send(
            Opcode.BINARY if part == 0 else Opcode.CONTINUATION, b"x" * 250, fin=part == 3
        )
    with trio.fail_after(WAIT_S):
        assert await ws.get_message() == b"x" * MAX


async def _violation(frames: list[tuple[Opcode, bytes, bool]]) -> tuple[int, int]:
    """Send `frames`; the code get_message ends with and the code of the close frame sent."""
    ws, peer = server_and_peer()
    for opcode, payload, fin in frames:
        await peer.send(opcode, payload, fin=fin)
    closed = await closed_by(ws)
    sent_code, _ = close_payload(await peer.receive())
    return closed.code, sent_code


async def test_continuation_without_a_start_is_a_protocol_error() -> None:
    assert await _violation([(Opcode.CONTINUATION, b"x", True)]) == (1002, 1002)


async def test_new_message_inside_a_fragmented_one_is_a_protocol_error() -> None:
    frames = [(Opcode.TEXT, b"a", False), (Opcode.BINARY, b"b", True)]
    assert await _violation(frames) == (1002, 1002)


async def test_fragmented_message_over_the_limit_is_too_big() -> None:
    frames = [(Opcode.BINARY, b"x" * 600, False), (Opcode.CONTINUATION, b"x" * 401, True)]
    assert await _violation(frames) == (1009, 1009)


async def test_single_frame_over_the_limit_is_too_big() -> None:
    assert await _violation([(Opcode.BINARY, b"x" * (MAX + 1), True)]) == (1009, 1009)


@pytest.mark.parametrize("fragments", [[b"\xff"], [b"ok", b"\xc3"]])
async def test_invalid_utf8_text_is_invalid_data(fragments: list[bytes]) -> None:
    frames = [
        (Opcode.TEXT if i == 0 else Opcode.CONTINUATION, part, i == len(fragments) - 1)
        for i, part in enumerate(fragments)
    ]
    assert await _violation(frames) == (1007, 1007)


async def test_bad_frame_header_closes_with_protocol_error() -> None:
    ws, peer = server_and_peer()
    await peer.stream.send_all(encode_frame(Opcode.TEXT, b"unmasked", mask=False))
    assert (await closed_by(ws)).code == 1002
    assert close_payload(await peer.receive())[0] == 1002


async def test_ping_returns_when_its_pong_comes_back() -> None:
    ws, peer = server_and_peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.get_message)  # the reader handles pongs
        await peer.send(Opcode.PONG, b"unsolicited")  # ignored
        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as pinging:
                pinging.start_soon(ws.ping)
                ping = await peer.receive()
                assert ping.opcode is Opcode.PING and len(ping.payload) == 8
                await peer.send(Opcode.PONG, ping.payload)
        nursery.cancel_scope.cancel()
    assert ws.closed is None


async def test_ping_raises_when_the_connection_ends() -> None:
    ws, peer = server_and_peer()
    codes: list[int] = []

    async def ping() -> None:
        with pytest.raises(ConnectionClosed) as raised:
            await ws.ping()
        codes.append(raised.value.code)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closed_by, ws)
            nursery.start_soon(ping)
            assert (await peer.receive()).opcode is Opcode.PING
            await peer.stream.aclose()
    assert codes == [1006]


async def test_close_started_by_the_peer() -> None:
    ws, peer = server_and_peer()
    await peer.close(4000, "bye now")
    closed = await closed_by(ws)
    assert (closed.code, closed.reason) == (4000, "bye now")
    assert close_payload(await peer.receive()) == (4000, "")  # the code is echoed
    with pytest.raises(ConnectionClosed):
        await ws.send_message("too late")
    with trio.fail_after(WAIT_S):
        await ws.aclose()
    assert await peer.receive_eof() == b""


async def test_close_without_a_code_is_answered_normally() -> None:
    ws, peer = server_and_peer()
    await peer.send(Opcode.CLOSE, b"")
    assert (await closed_by(ws)).code == 1005
    assert close_payload(await peer.receive())[0] == 1000


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),  # a 1-byte code
        (b"\x03\xee", 1002),  # 1006 is never sent
        (b"\x03\xe7", 1002),  # 999
        (b"\x13\x88", 1002),  # 5000
        (b"\x03\xe8\xff", 1007),  # a reason that is not UTF-8
    ],
)
async def test_malformed_close_frames_are_refused(payload: bytes, code: int) -> None:
    ws, peer = server_and_peer()
    await peer.send(Opcode.CLOSE, payload)
    assert (await closed_by(ws)).code == code
    assert close_payload(await peer.receive())[0] == code


async def test_close_started_by_us_waits_for_the_peers_answer() -> None:
    ws, peer = server_and_peer()
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.aclose, 4001, "done")
            assert close_payload(await peer.receive()) == (4001, "done")
            await peer.send(Opcode.TEXT, b"still in flight")  # discarded while closing
            await peer.close(4001, "ack")
        assert await peer.receive_eof() == b""
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.reason) == (4001, "ack")


async def test_long_close_reason_is_cut_on_a_character_boundary() -> None:
    ws, peer = server_and_peer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.aclose, 4000, "é" * 100)  # 200 bytes of UTF-8
        frame = await peer.receive()
        nursery.cancel_scope.cancel()  # the peer never answers; only the frame matters here
    assert close_payload(frame) == (4000, "é" * 61)  # 122 bytes: strict UTF-8, at most 123


async def test_connection_lost_without_a_close_is_abnormal() -> None:
    ws, peer = server_and_peer()
    await peer.stream.aclose()
    closed = await closed_by(ws)
    assert closed.code == 1006
    with pytest.raises(ConnectionClosed):
        await ws.send_message(b"nobody there")


async def test_concurrent_writers_never_interleave_frames() -> None:
    ours, theirs = await tcp_pair()
    ws, peer = WebSocket(ours, is_client=False, max_message_bytes=MAX), RawPeer(theirs, True)
    writers, messages, size = 4, 10, 256 * 1024
    received: list[bytes] = []

    async def write(fill: int) -> None:
        for _ in range(messages):
            await ws.send_message(bytes([fill]) * size)

    async def read() -> None:
        for _ in range(writers * messages):
            received.append((await peer.receive()).payload)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for fill in range(writers):
                nursery.start_soon(write, fill)
    assert all(payload == payload[:1] * size for payload in received)
    assert sorted(payload[0] for payload in received) == sorted(list(range(writers)) * messages)
    await peer.stream.aclose()
    await ws.stream.aclose()


async def test_control_frames_are_answered_while_a_write_is_stuck() -> None:
    """The reader queues its pong and close behind a write the peer is not reading, and a
    writer still waiting its turn sends nothing after that close."""
    ws, peer = server_and_peer(trio.testing.lockstep_stream_pair)
    outcomes: dict[str, object] = {}

    async def write(name: str, message: bytes) -> None:
        try:
            await ws.send_message(message)
            outcomes[name] = "sent"
        except ConnectionClosed as closed:
            outcomes[name] = closed.code

    async def read() -> None:
        closed = await closed_by(ws)
        outcomes["reader"] = (closed.code, closed.reason)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "first", b"a" * 500)
            await trio.testing.wait_all_tasks_blocked()  # stuck: the peer is not reading
            nursery.start_soon(write, "second", b"b" * 10)
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await peer.send(Opcode.PING, b"are you there")
            await peer.close(4000, "bye")
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == {"reader": (4000, "bye")}  # the reader did not wait on the write
            frames = [await peer.receive() for _ in range(3)]
        await ws.aclose()
        assert await peer.receive_eof() == b""
    assert frames == [
        Frame(Opcode.BINARY, True, b"a" * 500),
        Frame(Opcode.PONG, True, b"are you there"),
        Frame(Opcode.CLOSE, True, (4000).to_bytes(2, "big")),
    ]
    assert outcomes == {"reader": (4000, "bye"), "first": "sent", "second": 4000}


async def test_cancelled_write_leaves_no_garbage_on_the_wire() -> None:
    """A write cancelled mid-frame: neither a waiting writer nor aclose sends another byte."""
    ours, theirs = await tcp_pair()
    ws = WebSocket(ours, is_client=False, max_message_bytes=MAX)
    big = b"q" * (32 * 1024 * 1024)  # far more than the loopback socket buffers hold
    first, second = trio.CancelScope(), list[int]()

    async def write_first() -> None:
        with first:
            await ws.send_message(big)

    async def write_second() -> None:
        with pytest.raises(ConnectionClosed) as raised:
            await ws.send_message(b"second")
        second.append(raised.value.code)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_first)
            await trio.testing.wait_all_tasks_blocked()  # stuck: the peer is not reading
            nursery.start_soon(write_second)
            await trio.testing.wait_all_tasks_blocked()  # waiting its turn
            first.cancel()
        await ws.aclose()
        received = bytearray()
        while data := await theirs.receive_some():
            received += data
    assert first.cancelled_caught
    assert second == [1000]
    assert ws.closed is not None
    assert 0 < len(received) < len(big)
    assert bytes(received) == encode_frame(Opcode.BINARY, big, mask=False)[: len(received)]


async def test_aclose_while_another_task_reads() -> None:
    """A keepalive closing the connection while the session's reader waits (the link's pong
    timeout): the close is sent and both tasks end."""
    ws, peer = server_and_peer()
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closed_by, ws)
            await trio.testing.wait_all_tasks_blocked()
            await ws.aclose(1001, "pong timeout")
        assert close_payload(await peer.receive()) == (1001, "pong timeout")
        assert await peer.receive_eof() == b""
    assert ws.closed is not None
    assert (ws.closed.code, ws.closed.reason) == (1001, "pong timeout")
