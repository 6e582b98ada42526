"""Binary streams through two real daemons and a real broker: bytes arrive exact, a stalled
reader holds the writer within the credit window, and either end's close or reset reaches the
other (docs/protocol.md, "Binary streams")."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing

from meshactors.client import BinaryStream, ClientError, MeshClient, StreamError
from meshactors.control.client import FINISHED_STALL_TIMEOUT, RESET_WRITE_TIMEOUT
from meshactors.network.core import COMMAND_TIMEOUT
from meshactors.network.network import Network
from meshactors.network.stream_frames import STREAM_WINDOW_BYTES
from meshactors.network.stream_pipe import STREAM_FRAME_COST, STREAM_INBOX, frame_cost
from meshactors.network.stream_table import MAX_STREAMS, PEER_STREAM_BYTES
from meshactors.network.streams import STREAM_CHUNK_BYTES
from meshactors.paths import resolve_paths
from meshactors.socket_io import HANGUP_CHECK
from meshactors.wire.pipe_frames import MAX_STREAM_FRAME_BYTES, encode
from tests.network.appclient import AppClient
from tests.network.conftest import (
    NET,
    WAIT,
    Daemon,
    Mesh,
    active_pair,
    approve_both,
    solo_daemon,
)
from tests.support import LineClient

MIB = 1024 * 1024


def pattern(size: int) -> bytes:
    """`size` bytes that are not all alike, so a lost or swapped piece shows in the digest."""
    block = hashlib.sha256(b"meshactors").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def read_all(stream: BinaryStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


async def client_of(daemon: Daemon, nursery: trio.Nursery) -> MeshClient:
    socket = resolve_paths({"MESHACTORS_HOME": str(daemon.home)}).socket
    client = MeshClient(socket)
    await nursery.start(_run_client, client)
    return client


async def _run_client(client: MeshClient, task_status: trio.TaskStatus[None]) -> None:
    async with client:
        task_status.started()
        await trio.sleep_forever()


async def figures(daemon: Daemon) -> dict[str, Any]:
    network = daemon.network()
    found: dict[str, Any] = await network.ask("stream figures", network.streams.figures)
    return found


def protocols(node: dict[str, Any]) -> list[str]:
    """The `protocol` figure of every client actor in an `inspect` tree."""
    found = [node["figures"]["protocol"]] if node["kind"] == "client" else []
    return found + [p for child in node["children"] for p in protocols(child)]


async def until(test: Callable[[], Awaitable[bool]]) -> None:
    """Return once `test` holds. The figures it reads belong to other actors and announce no
    change, so they are looked at again every 10 ms (a deadline fails the test)."""
    with trio.fail_after(WAIT):
        while not await test():  # noqa: ASYNC110  (nothing to wait on: see above)
            await trio.sleep(0.01)


@attrs.define(eq=False)
class HeldReader:
    """A server's stream handler held before it reads (after one read, with `read_first`, and
    its end then, with `end_first`): once released it reads to the end, keeping the code of
    the error the stream ends with."""

    read_first: bool = False
    end_first: bool = False
    read_once: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)
    outcome: list[str] = attrs.field(factory=list)

    async def __call__(self, stream: BinaryStream) -> None:
        try:
            if self.read_first:
                await stream.receive_some()
                self.read_once.set()
            if self.end_first:
                await stream.send_eof()
            await self.release.wait()
            await read_all(stream)
        except StreamError as error:
            self.outcome.append(error.code)
        finally:
            self.done.set()

    async def ended(self) -> list[str]:
        """Release the handler and wait for it: the error codes its stream ended with."""
        self.release.set()
        with trio.fail_after(WAIT):
            await self.done.wait()
        return self.outcome


async def forgotten_by_both(a: Daemon, b: Daemon) -> bool:
    """Whether neither daemon holds a stream open."""
    return (await figures(a))["open"] == 0 == (await figures(b))["open"]


@pytest.fixture
async def pair(
    mesh: Mesh, nursery: trio.Nursery
) -> AsyncIterator[tuple[MeshClient, MeshClient, Daemon, Daemon]]:
    a, b = await active_pair(mesh)
    yield await client_of(a, nursery), await client_of(b, nursery), a, b


Pair = tuple[MeshClient, MeshClient, Daemon, Daemon]


async def digest_server(stream: BinaryStream) -> None:
    """Reads everything (hashing as it comes, so 100 MiB are never held), answers with its
    length and SHA-256, then ends."""
    digest, size = hashlib.sha256(), 0
    while chunk := await stream.receive_some():
        digest.update(chunk)
        size += len(chunk)
    await stream.send_all(size.to_bytes(8, "big") + digest.digest())
    await stream.send_eof()


BIG_STREAM_WAIT = 300  # seconds 100 MiB may take on a busy machine (no speed is asserted)


@pytest.mark.parametrize("size", [0, 1, 100 * MIB + 17])
async def test_bytes_arrive_exact_both_ways(pair: Pair, size: int) -> None:
    opener, server, _a, b = pair
    await server.serve_stream(NET, "digest", digest_server)
    data = pattern(size)
    with trio.fail_after(BIG_STREAM_WAIT):
        stream = await opener.open_stream(NET, b.device_id, "digest")
        assert stream.peer == b.device_id
        async with stream:
            for start in range(0, size, 100_000):
                await stream.send_all(data[start : start + 100_000])
            await stream.send_eof()
            answer = await read_all(stream)
            await stream.finish()  # both ends ended: the daemon closes the connection
    assert answer == size.to_bytes(8, "big") + hashlib.sha256(data).digest()


async def test_the_server_streams_to_the_opener(pair: Pair) -> None:
    opener, server, _a, b = pair
    data = pattern(2 * MIB + 5)

    async def source(stream: BinaryStream) -> None:
        await stream.send_all(data)
        await stream.send_eof()
        assert await read_all(stream) == b""

    await server.serve_stream(NET, "source", source)
    with trio.fail_after(WAIT * 3):
        async with await opener.open_stream(NET, b.device_id, "source") as stream:
            await stream.send_eof()
            received = await read_all(stream)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_a_stalled_reader_holds_the_writer_within_the_window(pair: Pair) -> None:
    opener, server, a, b = pair
    release = trio.Event()
    total = 24 * MIB
    data = pattern(total)
    received: list[bytes] = []

    async def stalled(stream: BinaryStream) -> None:
        await release.wait()
        received.append(await read_all(stream))
        await stream.send_eof()

    await server.serve_stream(NET, "stall", stalled)
    sent = 0
    async with (
        trio.open_nursery() as nursery,
        await opener.open_stream(NET, b.device_id, "stall") as stream,
    ):

        async def write() -> None:
            nonlocal sent
            for start in range(0, total, MIB):
                await stream.send_all(data[start : start + MIB])
                sent += MIB
            await stream.send_eof()

        nursery.start_soon(write)
        sending: dict[str, Any] = {}
        receiving: dict[str, Any] = {}

        async def stalled_on_credit() -> bool:
            """The sender's daemon is out of credit and all it sent has arrived."""
            nonlocal sending, receiving
            sending, receiving = await figures(a), await figures(b)
            out = sending["counters"].get("bytes_out", 0)
            credit = sending["streams"][0]["send_credit"] if sending["streams"] else 0
            arrived = receiving["counters"].get("bytes_in", 0)
            return credit < STREAM_CHUNK_BYTES + STREAM_FRAME_COST and out == arrived > 0

        await until(stalled_on_credit)
        # what waits in the receiving daemon for the program is within the window ...
        assert 0 < receiving["streams"][0]["held"] <= STREAM_WINDOW_BYTES
        # ... and the writer is held, far short of what it wants to write
        assert sent < total // 2
        assert "binary-stream" in protocols(await a.call("inspect"))
        release.set()
        with trio.fail_after(WAIT * 3):
            assert await read_all(stream) == b""
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(data).digest()


async def test_closing_the_opener_is_reported_to_the_server(pair: Pair) -> None:
    opener, server, _a, b = pair
    outcome: list[BaseException] = []
    done = trio.Event()

    async def reader(stream: BinaryStream) -> None:
        try:
            await read_all(stream)
        except StreamError as reset:
            outcome.append(reset)
        finally:
            done.set()

    await server.serve_stream(NET, "reader", reader)
    with trio.fail_after(WAIT):
        stream = await opener.open_stream(NET, b.device_id, "reader")
        await stream.send_all(b"half a message")
        await stream.aclose()  # no end frame: the stream is cancelled
        await done.wait()
    assert [getattr(e, "code", None) for e in outcome] == ["cancelled"]


async def test_a_reset_by_the_server_reaches_the_opener_with_its_message(pair: Pair) -> None:
    opener, server, _a, b = pair

    async def refuse(stream: BinaryStream) -> None:
        await stream.receive_some()
        raise ValueError("not today")

    await server.serve_stream(NET, "refuse", refuse)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "refuse") as stream:
            await stream.send_all(b"hello")
            with pytest.raises(StreamError) as reset:
                await read_all(stream)
    assert reset.value.code == "remote_error"
    assert "not today" in str(reset.value)


async def test_a_method_nobody_serves_is_refused(pair: Pair) -> None:
    opener, server, _a, b = pair
    await server.serve(NET, "plain", _echo)  # an RPC claim is no binary claim
    with trio.fail_after(WAIT):
        for method in ("nobody", "plain"):
            with pytest.raises(ClientError) as refused:
                await opener.open_stream(NET, b.device_id, method)
            assert refused.value.code == "no_handler"
            said = f"no one serves binary streams of {method!r} on b ({b.device_id[:12]})"
            assert said in str(refused.value)


async def _echo(payload: Any, _context: Any) -> Any:
    return payload


async def line_client(daemon: Daemon) -> LineClient:
    socket = resolve_paths({"MESHACTORS_HOME": str(daemon.home)}).socket
    return LineClient(await trio.open_unix_socket(str(socket)))


async def test_only_a_first_request_switches_and_a_refusal_keeps_json_lines(pair: Pair) -> None:
    _opener, server, a, b = pair
    await server.serve_stream(NET, "digest", digest_server)
    lines = await line_client(a)
    with trio.fail_after(WAIT):
        assert (await lines.call("status"))["ok"]
        late = await lines.call("stream_open", network=NET, peer=b.device_id, method="digest")
        assert late["error"]["code"] == "conflict"
        unknown = await lines.call("stream_accept", network=NET, stream_id="0" * 32)
        assert unknown["error"]["code"] == "conflict"
        assert (await lines.call("status"))["ok"]  # still JSON lines
        fresh = await line_client(a)
        unknown = await fresh.call("stream_accept", network=NET, stream_id="0" * 32)
        assert unknown["error"]["code"] == "unknown_request"
        assert (await fresh.call("status"))["ok"]


async def test_binary_claims_and_calls_do_not_mix(pair: Pair) -> None:
    opener, server, _a, b = pair
    await server.serve_stream(NET, "digest", digest_server)
    with trio.fail_after(WAIT):
        with pytest.raises(ClientError) as refused:
            await opener.rpc_call(NET, b.device_id, "digest", None)
        assert refused.value.code == "no_handler"
        said = f"'digest' is served as binary streams on b ({b.device_id[:12]}): open a stream"
        assert said in str(refused.value)
        with pytest.raises(ClientError) as bad:
            await server.call("rpc_register", {"network": NET, "method": "x", "streaming": 1})
        assert bad.value.code == "invalid_params"


async def test_a_stream_to_this_daemon_itself(pair: Pair) -> None:
    opener, _server, a, _b = pair
    await opener.serve_stream(NET, "digest", digest_server)
    data = pattern(300_000)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, a.device_id, "digest") as stream:
            await stream.send_all(data)
            await stream.send_eof()
            answer = await read_all(stream)
    assert answer[8:] == hashlib.sha256(data).digest()


async def test_closing_the_server_without_an_end_cancels_the_opener(pair: Pair) -> None:
    opener, server, _a, b = pair

    async def hang_up(stream: BinaryStream) -> None:
        await stream.receive_some()
        await stream.aclose()

    await server.serve_stream(NET, "hang_up", hang_up)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "hang_up") as stream:
            await stream.send_all(b"hello")
            with pytest.raises(StreamError) as reset:
                await read_all(stream)
    assert reset.value.code == "cancelled"


async def test_a_peer_that_leaves_ends_its_streams(pair: Pair) -> None:
    opener, server, _a, b = pair
    accepted = trio.Event()

    async def wait_forever(stream: BinaryStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    await server.serve_stream(NET, "forever", wait_forever)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "forever") as stream:
            await accepted.wait()
            await b.call("network_remove", network=NET)  # b leaves; its programs stay
            with pytest.raises(StreamError) as reset:
                await read_all(stream)
    assert reset.value.code == "peer_not_active"


async def test_http_cannot_become_a_stream(pair: Pair) -> None:
    _opener, _server, a, b = pair
    socket = resolve_paths({"MESHACTORS_HOME": str(a.home)}).socket
    body = json.dumps({"network": NET, "peer": b.device_id, "method": "digest"}).encode()
    head = f"POST /v1/stream_open HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with trio.fail_after(WAIT):
        stream = await trio.open_unix_socket(str(socket))
        await stream.send_all(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += await stream.receive_some(65536)
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"bad_request"' in answer


async def test_a_frame_over_the_limit_is_answered_in_band(pair: Pair) -> None:
    opener, server, _a, b = pair
    outcome: list[str] = []
    done = trio.Event()

    async def reader(stream: BinaryStream) -> None:
        try:
            await read_all(stream)
        except StreamError as error:
            outcome.append(error.code)
        finally:
            done.set()

    await server.serve_stream(NET, "reader", reader)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "reader") as stream:
            await stream.socket.send_all(struct.pack(">I", MAX_STREAM_FRAME_BYTES + 1))
            with pytest.raises(StreamError) as refused:
                await read_all(stream)
        await done.wait()
    assert refused.value.code == "frame_too_large"
    assert outcome == ["remote_error"]


async def test_a_second_send_eof_sends_nothing_so_the_stream_finishes(pair: Pair) -> None:
    """trio's HalfCloseableStream lets send_eof be called again, doing nothing: a second end
    frame would be data after the end, and break the stream."""
    opener, server, _a, b = pair

    async def echo_end(stream: BinaryStream) -> None:
        await read_all(stream)
        await stream.send_eof()
        await stream.send_eof()

    await server.serve_stream(NET, "twice", echo_end)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "twice") as stream:
            await stream.send_eof()
            await stream.send_eof()
            assert await read_all(stream) == b""
            await stream.finish()


async def test_a_reset_after_the_servers_end_still_reaches_the_opener(pair: Pair) -> None:
    opener, server, _a, b = pair

    async def end_then_fail(stream: BinaryStream) -> None:
        await stream.send_eof()
        await stream.receive_some()
        raise ValueError("changed my mind")

    await server.serve_stream(NET, "fickle", end_then_fail)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "fickle") as stream:
            assert await read_all(stream) == b""  # the server's end
            await stream.send_all(b"more")
            with pytest.raises(StreamError) as reset:
                await stream.finish()
    assert reset.value.code == "remote_error"


async def test_a_handler_failing_on_a_closed_stream_leaves_the_client_serving(pair: Pair) -> None:
    opener, server, _a, b = pair
    failed: list[str] = []
    second = trio.Event()

    async def reader(stream: BinaryStream) -> None:
        try:
            await read_all(stream)  # the opener hangs up: StreamError, the stream is closed
        finally:
            failed.append(stream.stream_id)
            if len(failed) == 2:
                second.set()

    await server.serve_stream(NET, "late", reader)
    with trio.fail_after(WAIT):
        for _ in range(2):  # the second stream is served too: the first failure hurt nothing
            stream = await opener.open_stream(NET, b.device_id, "late")
            await stream.aclose()
        await second.wait()
    assert len(set(failed)) == 2


async def test_a_core_crash_ends_its_streams_with_stopped(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await mesh.daemon("a", debug_ops=True), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await approve_both(a, b)
    opener, server = await client_of(a, nursery), await client_of(b, nursery)
    accepted = trio.Event()

    async def wait_forever(stream: BinaryStream) -> None:
        accepted.set()
        await read_all(stream)

    await server.serve_stream(NET, "forever", wait_forever)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "forever") as stream:
            await accepted.wait()
            await a.call("debug_crash", path=f"daemon/networks/network {NET}/core")
            with pytest.raises(StreamError) as ended:
                await read_all(stream)
    assert ended.value.code == "stopped"


async def test_a_handler_that_sends_its_end_and_returns_delivers_everything(pair: Pair) -> None:
    """A `serve_stream` handler that sends its data and its end and returns: the library keeps
    the connection until the stream finished, so the opener reads every byte (more than a
    window and the daemon's read-ahead) and may still send before its own end: more than a
    window, so its end goes out only with credit from the server, whose library discards it."""
    opener, server, _a, b = pair
    data = pattern(3 * MIB + 7)
    returned = trio.Event()

    async def download(stream: BinaryStream) -> None:
        await stream.send_all(data)
        await stream.send_eof()
        returned.set()

    await server.serve_stream(NET, "download", download)
    with trio.fail_after(WAIT * 3):
        async with await opener.open_stream(NET, b.device_id, "download") as stream:
            received = await read_all(stream)
            await returned.wait()  # its connection would be closed by now, but for the wait
            await stream.send_all(pattern(STREAM_WINDOW_BYTES + 1))
            await stream.send_eof()
            await stream.finish()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_a_server_closing_right_after_its_end_loses_nothing_it_sent(pair: Pair) -> None:
    """The serving program sends more than a window and the daemon's read-ahead, its end, and
    closes its connection at once: its daemon still sends what it read and the end, and the
    stream finishes when the opener ends too."""
    opener, server, _a, b = pair
    data = pattern(4 * MIB + 7)

    async def send_and_close(stream: BinaryStream) -> None:
        await stream.send_all(data)
        await stream.send_eof()
        await stream.aclose()

    await server.serve_stream(NET, "send_and_close", send_and_close)
    with trio.fail_after(WAIT * 3):
        async with await opener.open_stream(NET, b.device_id, "send_and_close") as stream:
            received = await read_all(stream)
            await stream.send_eof()
            await stream.finish()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_what_the_opener_sends_a_server_that_closed_cancels_it(pair: Pair) -> None:
    """The server ended and closed: the opener reads all of it, and what it sends after is
    lost, so its stream ends in `cancelled` (heard before its own end: a stream whose ends both
    went out is finished for that end's daemon, whatever the reset that comes after)."""
    opener, server, _a, b = pair
    closed = trio.Event()

    async def end_and_close(stream: BinaryStream) -> None:
        await stream.send_all(b"all of it")
        await stream.send_eof()
        await stream.aclose()
        closed.set()

    await server.serve_stream(NET, "end_and_close", end_and_close)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "end_and_close") as stream:
            assert await read_all(stream) == b"all of it"
            await closed.wait()
            await stream.send_all(b"late")
            with pytest.raises(StreamError) as lost:
                await stream.finish()  # before our end: it returns only by raising
    assert lost.value.code == "cancelled"


async def test_data_after_the_openers_end_resets_the_stream_after_the_rest(pair: Pair) -> None:
    """Only an error frame may follow an end frame: data after it is taken as one, so the
    server reads all the opener sent up to its end, then `remote_error`; the opener learns it
    broke the framing (`protocol`) rather than seeing its stream finish."""
    opener, server, _a, b = pair
    received: list[bytes] = []
    outcome: list[StreamError] = []
    done = trio.Event()

    async def reader(stream: BinaryStream) -> None:
        try:
            while chunk := await stream.receive_some():
                received.append(chunk)
            await stream.finish()  # before our end: it returns only by raising
        except StreamError as error:
            outcome.append(error)
        finally:
            done.set()

    await server.serve_stream(NET, "reader", reader)
    with trio.fail_after(WAIT):
        async with await opener.open_stream(NET, b.device_id, "reader") as stream:
            await stream.send_all(b"the data")
            await stream.send_eof()
            await stream.socket.send_all(b"".join(encode(b"more")))  # past the library's check
            with pytest.raises(StreamError) as told:
                await stream.finish()
            await done.wait()
    assert told.value.code == "protocol"
    assert b"".join(received) == b"the data"
    assert [(e.code, e.message) for e in outcome] == [
        (
            "remote_error",
            "the other program broke the stream's framing: "
            "data after the end frame: only an error frame may follow it",
        )
    ]


async def test_an_opener_gone_while_waiting_for_credit_cancels_the_stream_at_once(
    pair: Pair,
) -> None:
    """The opener sends more than the window and the daemon's read-ahead, in small frames, to
    a server that does not read, and closes its connection without an end: its daemon notices
    while it waits for credit, and the stream leaves both tables before the server reads; the
    server then reads `cancelled`."""
    opener, server, a, b = pair
    stalled = HeldReader()

    async def stalled_on_credit() -> bool:
        sending = await figures(a)
        streams = sending["streams"]
        return bool(streams) and streams[0]["send_credit"] < STREAM_CHUNK_BYTES + STREAM_FRAME_COST

    await server.serve_stream(NET, "stalled", stalled)
    with trio.fail_after(WAIT):
        stream = await opener.open_stream(NET, b.device_id, "stalled")
    piece = pattern(64 * 1024)
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            for _ in range(4 * MIB // len(piece)):
                await stream.send_all(piece)

        nursery.start_soon(write)
        await until(stalled_on_credit)
        await trio.testing.wait_all_tasks_blocked()  # the opener's writes wait: so does its daemon
        nursery.cancel_scope.cancel()
    await stream.aclose()  # no end frame, and frames wait for credit
    await until(lambda: forgotten_by_both(a, b))
    assert "binary-stream" not in protocols(await a.call("inspect"))
    assert await stalled.ended() == ["cancelled"]


async def stalls_cut_off(daemon: Daemon) -> bool:
    """Whether `daemon` closed the connection of the stalled server's program."""
    return "binary-stream" not in protocols(await daemon.call("inspect"))


async def send_to_stalls(pair: Pair, stalls: HeldReader) -> BinaryStream:
    """A stream from the opener to `stalls` on the server, with most of a window sent: more
    than the sockets hold, so the server's daemon has some left to write when it stalls."""
    opener, server, _a, b = pair
    await server.serve_stream(NET, "stalls", stalls)
    stream = await opener.open_stream(NET, b.device_id, "stalls")
    await stream.send_all(pattern(STREAM_WINDOW_BYTES * 3 // 4))
    return stream


async def cut_off_past(daemon: Daemon, clock: trio.testing.MockClock, timeout: float) -> None:
    """`daemon` keeps the stalled connection while its writer waits out `timeout`, and closes
    it once the clock is past that."""
    await trio.testing.wait_all_tasks_blocked()  # the writer waits on the program, deadline set
    assert not await stalls_cut_off(daemon)
    clock.jump(timeout)
    await until(lambda: stalls_cut_off(daemon))


async def test_a_reset_stream_whose_program_stopped_reading_is_cut_off(
    pair: Pair, real_time_clock: trio.testing.MockClock
) -> None:
    """The server reads once and stops; the opener sends most of a window and resets. The
    server's daemon queues the error frame behind what the program did not read, and closes
    the connection once that was not written within RESET_WRITE_TIMEOUT: the connection does
    not stay, holding its data, after its stream left the table."""
    _opener, _server, _a, b = pair
    stalls = HeldReader(read_first=True)

    async def forgotten() -> bool:
        return (await figures(b))["open"] == 0

    with trio.fail_after(WAIT):
        stream = await send_to_stalls(pair, stalls)
        await stalls.read_once.wait()
        await stream.reset("enough")
    await until(forgotten)
    await cut_off_past(b, real_time_clock, RESET_WRITE_TIMEOUT)
    outcome = await stalls.ended()
    assert outcome and outcome[0] in {"remote_error", "connection_lost"}  # cut off: no end


async def test_a_finished_stream_whose_program_stopped_reading_is_cut_off(
    pair: Pair, real_time_clock: trio.testing.MockClock
) -> None:
    """The server reads once, sends its end and stops reading; the opener sends most of a
    window and its end. The stream finishes and leaves the table with what the server did not
    read still queued for it: its daemon closes the connection once a write of that waited
    FINISHED_STALL_TIMEOUT, rather than keep it and its data for ever."""
    _opener, _server, a, b = pair
    stalls = HeldReader(read_first=True, end_first=True)

    async def finished() -> bool:
        found = await figures(b)
        return found["open"] == 0 and found["counters"].get("finished") == 1

    with trio.fail_after(WAIT):
        stream = await send_to_stalls(pair, stalls)
        await stream.send_eof()
        assert await read_all(stream) == b""  # the server's end
    await until(finished)
    await cut_off_past(b, real_time_clock, FINISHED_STALL_TIMEOUT)
    assert await stalls.ended() == ["connection_lost"]
    await until(lambda: budgets_back(a, b))


@attrs.define(eq=False)
class SteadyReader:
    """A server's stream handler that reads once and sends its end, then reads one piece each
    time the test lets it (`read_one`), keeping what it read, until the end or an error."""

    data: bytearray = attrs.field(factory=bytearray)
    ended: bool = False
    error: str | None = None  # the code of the error its stream ended with
    _go: trio.MemorySendChannel[None] = attrs.field(init=False)
    _going: trio.MemoryReceiveChannel[None] = attrs.field(init=False)
    _took: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._go, self._going = trio.open_memory_channel[None](1)

    async def __call__(self, stream: BinaryStream) -> None:
        self.data += await stream.receive_some()
        await stream.send_eof()
        async for _ in self._going:
            try:
                piece = await stream.receive_some()
            except StreamError as error:
                self.error = error.code
                piece = b""
            self.data += piece
            self.ended = not piece
            self._took.set()

    async def read_one(self) -> None:
        """Let it read one piece (up to what one read of its socket brings), and wait for it."""
        self._took = trio.Event()
        await self._go.send(None)
        with trio.fail_after(WAIT):
            await self._took.wait()


async def test_a_finished_streams_slow_but_steady_reader_gets_all_its_data(
    pair: Pair, real_time_clock: trio.testing.MockClock
) -> None:
    """The server's program reads what is left of a finished stream a piece at a time, most
    of FINISHED_STALL_TIMEOUT apart, far longer than that in all (and than one write of it
    takes): each piece its socket takes gives the rest its time again, so it gets all."""
    opener, server, _a, b = pair
    steady = SteadyReader()
    sent = pattern(STREAM_WINDOW_BYTES * 3 // 4)  # more than sockets hold

    async def finished() -> bool:
        found = await figures(b)
        return found["open"] == 0 and found["counters"].get("finished") == 1

    await server.serve_stream(NET, "steady", steady)
    with trio.fail_after(WAIT):
        stream = await opener.open_stream(NET, b.device_id, "steady")
        await stream.send_all(sent)
        await stream.send_eof()
        assert await read_all(stream) == b""  # the server's end
    await until(finished)
    while not steady.ended:
        await trio.testing.wait_all_tasks_blocked()  # the writer waits on the program
        real_time_clock.jump(FINISHED_STALL_TIMEOUT * 0.75)
        await steady.read_one()
    assert steady.error is None  # not cut off
    assert bytes(steady.data) == sent


async def test_an_opener_gone_after_its_end_while_stalled_lets_go_at_its_timeout(
    pair: Pair, real_time_clock: trio.testing.MockClock
) -> None:
    """The opener sends past the window and its daemon's read-ahead to a server that never
    reads, then its end, and closes: its daemon still waits for credit with the end unread by
    core. Once the stream's timeout from the close passed, its connection is gone and the
    stream leaves both tables (the server then reads `cancelled`)."""
    opener, server, a, b = pair
    never_reads = HeldReader()
    piece = pattern(64 * 1024)

    async def stalled() -> bool:
        return bool((await figures(a))["streams"][0]["send_credit"] < frame_cost(piece))

    await server.serve_stream(NET, "never_reads", never_reads)
    timeout = 5.0
    with trio.fail_after(WAIT):
        stream = await opener.open_stream(
            NET, b.device_id, "never_reads", timeout_ms=int(timeout * 1000)
        )
        while not await stalled():
            await stream.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()
        for _ in range(STREAM_INBOX + 2):  # core holds one, the reader waits with one more
            await stream.send_all(piece)
        await stream.send_eof()
    await stream.aclose()
    for step in (HANGUP_CHECK, timeout):  # the close is noticed, then the timeout from it passes
        await trio.testing.wait_all_tasks_blocked()
        real_time_clock.jump(step)
    await until(lambda: forgotten_by_both(a, b))
    assert "binary-stream" not in protocols(await a.call("inspect"))
    assert await never_reads.ended() == ["cancelled"]


async def serving_program(daemon: Daemon, nursery: trio.Nursery, method: str) -> AppClient:
    """A program on `daemon` that serves binary streams of `method`, its events kept."""
    socket = resolve_paths({"MESHACTORS_HOME": str(daemon.home)}).socket
    owner = await AppClient.open(socket, nursery)
    await owner.call("rpc_register", network=NET, method=method, streaming="binary")
    return owner


@attrs.define(eq=False)
class OpeningStream:
    """An opener's `open_stream` run in a task of its own, so the test can hold the server's
    accept meanwhile: `stream` waits for what it opened."""

    opened: list[BinaryStream] = attrs.field(factory=list)
    is_open: trio.Event = attrs.field(factory=trio.Event)

    async def open(
        self, opener: MeshClient, peer: str, method: str, timeout_ms: int | None = None
    ) -> None:
        self.opened.append(await opener.open_stream(NET, peer, method, timeout_ms=timeout_ms))
        self.is_open.set()

    async def stream(self) -> BinaryStream:
        await self.is_open.wait()
        (stream,) = self.opened
        return stream


async def offered(
    pair: Pair, nursery: trio.Nursery, method: str, timeout_ms: int | None = None
) -> tuple[dict[str, Any], OpeningStream]:
    """b's program serves `method` and the opener asks b for a stream of it in its own task:
    the `stream_incoming` event b's program got, and the opening to wait on."""
    opener, _server, _a, b = pair
    owner = await serving_program(b, nursery, method)
    opening = OpeningStream()
    nursery.start_soon(opening.open, opener, b.device_id, method, timeout_ms)
    return await owner.event("stream_incoming"), opening


async def test_an_opener_that_hangs_up_while_waiting_ends_the_offer_on_both_daemons(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """The program gives up on its stream_open (closes its connection) before the server's
    program accepted: its daemon notices within HANGUP_CHECK, not after timeout_ms, so the
    offer leaves both tables (no place held) and a late accept of it is refused."""
    _opener, _server, a, b = pair
    owner = await serving_program(b, nursery, "lazy")
    lines = await line_client(a)
    await lines.send(
        "stream_open", network=NET, peer=b.device_id, method="lazy", timeout_ms=600_000
    )
    offer = await owner.event("stream_incoming")
    assert (await figures(a))["open"] == 1 == (await figures(b))["open"]
    await lines.aclose()
    await until(lambda: forgotten_by_both(a, b))
    late = await (await line_client(b)).call(
        "stream_accept", network=NET, stream_id=offer["stream_id"]
    )
    assert late["error"]["code"] == "unknown_request"


@attrs.define(eq=False)
class HeldCore:
    """A daemon's network core held inside one request until released: what is asked of it
    meanwhile waits in its inbox, in order."""

    network: Network
    patience: float = WAIT  # seconds the hold may last: past a clock's jump, when there is one
    running: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)

    async def hold(self) -> None:
        self.running.set()
        await self.release.wait()

    async def run(self) -> None:
        await self.network.core.ask(self.hold, "hold core", timeout=self.patience)

    async def queued(self, count: int) -> None:
        """Wait until `count` requests (asks, tells) wait in core's inbox: its traffic aside."""
        inbox = self.network.core.inbox
        await until(lambda: _now(inbox.waiting() - inbox.statistics().current_buffer_used == count))


async def _now(value: bool) -> bool:
    """`value`, for `until`."""
    return value


async def budget_in_use(a: Daemon) -> bool:
    """Whether a's streams have bytes in flight to a peer."""
    return bool((await figures(a))["in_flight"])


async def cut_off_while_held(
    nursery: trio.Nursery, daemon: Daemon, op: str, **params: Any
) -> tuple[HeldCore, HeldCore]:
    """A program sends `op` to `daemon` while its core is held (`first`) and hangs up while the
    op waits: returned once the op was cut off, with core held again right after the op
    (`second`), both still to release."""
    first, second = HeldCore(daemon.network()), HeldCore(daemon.network())
    nursery.start_soon(first.run)
    with trio.fail_after(WAIT), structlog.testing.capture_logs() as logs:
        await first.running.wait()
        lines = await line_client(daemon)
        await lines.send(op, **params)
        await first.queued(1)  # the op waits for core
        nursery.start_soon(second.run)
        await first.queued(2)  # core is held again right after the op
        await lines.aclose()
        await until(lambda: _now(any(e["event"].endswith("op cut off") for e in logs)))
    return first, second


async def test_an_accept_answered_after_its_program_hung_up_ends_the_stream(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """The serving program sends stream_accept and hangs up before core answers it (core is
    held until the op was cut off): the stream core then attaches is taken by nobody, so the
    connection's close ends it. The opener, which got its stream and sent into it, reads
    `cancelled`; the stream leaves both tables and its bytes in flight go back to the budget."""
    _opener, _server, a, b = pair
    offer, opening = await offered(pair, nursery, "late")
    first, second = await cut_off_while_held(
        nursery, b, "stream_accept", network=NET, stream_id=offer["stream_id"]
    )
    first.release.set()
    with trio.fail_after(WAIT):
        await second.running.wait()  # the accept ran: the opener has its stream
        stream = await opening.stream()
        await stream.send_all(pattern(64 * 1024))
    await until(lambda: budget_in_use(a))  # sent: its credit cannot come back
    second.release.set()
    with trio.fail_after(WAIT), pytest.raises(StreamError) as ended:
        await read_all(stream)
    assert ended.value.code == "cancelled"
    await until(lambda: forgotten_by_both(a, b))
    await until(lambda: budgets_back(a, b))


async def test_an_open_answered_after_its_program_hung_up_ends_the_stream(
    pair: Pair, nursery: trio.Nursery
) -> None:
    """The opening program sends stream_open and hangs up before core answers it (core is held
    until the op was cut off), so nobody waits on the offer core then sends: the peer's program
    accepts it and sends into it, and the stream core attaches on stream_ready is taken by
    nobody. The connection's close ends it: the serving program reads `cancelled`, the stream
    leaves both tables and its bytes in flight go back to the budget."""
    _opener, server, a, b = pair
    owner = await serving_program(b, nursery, "unheld")
    first, second = await cut_off_while_held(
        nursery, a, "stream_open", network=NET, peer=b.device_id, method="unheld"
    )
    first.release.set()
    with trio.fail_after(WAIT):
        await second.running.wait()  # the open ran: the offer went out
        offer = await owner.event("stream_incoming")
        stream = await server.accept_stream(NET, offer["stream_id"])
        await stream.send_all(pattern(64 * 1024))
    await until(lambda: budget_in_use(b))  # sent: its credit cannot come back
    await until(lambda: _now(a.network().core.inbox.statistics().current_buffer_used > 0))
    second.release.set()  # stream_ready, in the traffic lane, goes before the close's request
    with trio.fail_after(WAIT), pytest.raises(StreamError) as ended:
        await read_all(stream)
    assert ended.value.code == "cancelled"
    await until(lambda: forgotten_by_both(a, b))
    await until(lambda: budgets_back(a, b))


async def test_an_open_answered_timeout_as_the_peer_accepts_ends_the_stream(
    pair: Pair, nursery: trio.Nursery, real_time_clock: trio.testing.MockClock
) -> None:
    """The opener's core is held past COMMAND_TIMEOUT, so its program's stream_open is answered
    `timeout` before core ran it; released, core sends the offer and, held again, takes the
    peer's accept only after that answer went. The program keeps its connection open, yet the
    stream the op set up ends at once (the serving program reads `cancelled`) and leaves both
    tables, rather than stay attached to nobody until that connection closes."""
    _opener, server, a, b = pair
    owner = await serving_program(b, nursery, "tardy")
    first, second = (HeldCore(a.network(), patience=COMMAND_TIMEOUT + WAIT) for _ in range(2))
    nursery.start_soon(first.run)
    with trio.fail_after(WAIT):
        await first.running.wait()
        lines = await line_client(a)
        params = {"network": NET, "peer": b.device_id, "method": "tardy", "timeout_ms": 600_000}
        request = await lines.send("stream_open", **params)
        await first.queued(1)  # the op waits for core
        nursery.start_soon(second.run)
        await first.queued(2)  # core is held again right after the op
    real_time_clock.jump(COMMAND_TIMEOUT)  # the op's ask times out
    with trio.fail_after(WAIT):
        answer = await lines.frame()
        assert (answer["id"], answer["error"]["code"]) == (request, "timeout")
        first.release.set()
        await second.running.wait()  # the open ran: the offer went out
        offer = await owner.event("stream_incoming")
        stream = await server.accept_stream(NET, offer["stream_id"])
    await until(lambda: _now(a.network().core.inbox.statistics().current_buffer_used > 0))
    second.release.set()  # stream_ready, in the traffic lane, goes first
    with trio.fail_after(WAIT), pytest.raises(StreamError) as ended:
        await read_all(stream)
    assert ended.value.code == "cancelled"
    await until(lambda: forgotten_by_both(a, b))
    await lines.aclose()


async def test_an_accept_answered_timeout_ends_the_stream_it_set_up(
    pair: Pair, nursery: trio.Nursery, real_time_clock: trio.testing.MockClock
) -> None:
    """The server's core is held past COMMAND_TIMEOUT, so its program's stream_accept is
    answered `timeout` before core ran it; released, core accepts and the opener gets its
    stream. The program keeps its connection open but never takes the stream: it ends at once
    (the opener reads `cancelled`) and leaves both tables."""
    _opener, _server, a, b = pair
    offer, opening = await offered(pair, nursery, "unsure", timeout_ms=600_000)
    held = HeldCore(b.network(), patience=COMMAND_TIMEOUT + WAIT)
    nursery.start_soon(held.run)
    with trio.fail_after(WAIT):
        await held.running.wait()
        lines = await line_client(b)
        request = await lines.send("stream_accept", network=NET, stream_id=offer["stream_id"])
        await held.queued(1)  # the op waits for core
    real_time_clock.jump(COMMAND_TIMEOUT)  # the op's ask times out
    with trio.fail_after(WAIT):
        answer = await lines.frame()
        assert (answer["id"], answer["error"]["code"]) == (request, "timeout")
        held.release.set()  # core accepts now
        stream = await opening.stream()
    with trio.fail_after(WAIT), pytest.raises(StreamError) as ended:
        await read_all(stream)
    assert ended.value.code == "cancelled"
    await until(lambda: forgotten_by_both(a, b))
    await lines.aclose()


PEER_STREAMS = 5  # streams to one peer in the budget tests: their windows are well past it


def in_flight_of(found: dict[str, Any]) -> int:
    """What a daemon's streams have in flight, by their own credit: sent, credit not back."""
    return sum(STREAM_WINDOW_BYTES - stream["send_credit"] for stream in found["streams"])


async def budget_taken(a: Daemon, b: Daemon) -> bool:
    """Whether a's streams to b have in flight all but less than a data piece of a peer's
    budget, and all a sent has reached b."""
    sending, receiving = await figures(a), await figures(b)
    out, arrived = sending["counters"].get("bytes_out", 0), receiving["counters"].get("bytes_in")
    return in_flight_of(sending) > PEER_STREAM_BYTES - frame_cost(b"x" * STREAM_CHUNK_BYTES) and (
        out == arrived
    )


async def budgets_back(a: Daemon, b: Daemon) -> bool:
    """Whether neither daemon has stream bytes in flight to any peer."""
    return (await figures(a))["in_flight"] == {} == (await figures(b))["in_flight"]


async def test_many_streams_to_one_peer_share_its_budget_and_arrive_exact(
    pair: Pair,
) -> None:
    """Streams to one peer whose programs do not read yet: together they have no more than
    PEER_STREAM_BYTES in flight (not a window each: what the broker queues for one receiver
    stays under its limit), then every byte arrives exact, and the budget comes back."""
    opener, server, a, b = pair
    release = trio.Event()

    async def held_digest(stream: BinaryStream) -> None:
        await release.wait()
        await digest_server(stream)

    await server.serve_stream(NET, "held", held_digest)
    sent = [bytes([index]) + pattern(3 * MIB) for index in range(PEER_STREAMS)]
    answers: dict[int, bytes] = {}

    async def send(index: int) -> None:
        async with await opener.open_stream(NET, b.device_id, "held") as stream:
            await stream.send_all(sent[index])
            await stream.send_eof()
            answers[index] = await read_all(stream)
            await stream.finish()

    with trio.fail_after(WAIT * 3):
        async with trio.open_nursery() as senders:
            for index in range(PEER_STREAMS):
                senders.start_soon(send, index)
            await until(lambda: budget_taken(a, b))
            await trio.testing.wait_all_tasks_blocked()  # the senders wait: so does a's core
            sending = await figures(a)
            assert in_flight_of(sending) <= PEER_STREAM_BYTES
            assert sending["in_flight"] == {b.device_id: in_flight_of(sending)}
            release.set()
    assert answers == {
        index: len(data).to_bytes(8, "big") + hashlib.sha256(data).digest()
        for index, data in enumerate(sent)
    }
    assert (await figures(a))["in_flight_peak"] <= PEER_STREAM_BYTES
    await until(lambda: budgets_back(a, b))


async def test_streams_reset_midway_give_their_peers_budget_back(pair: Pair) -> None:
    """Streams to one peer stalled at its budget, then their programs hang up before their end:
    the streams are reset, their bytes in flight come back to the budget on both daemons, and a
    new stream to the peer carries more than the budget."""
    opener, server, a, b = pair
    stalled = HeldReader()
    await server.serve_stream(NET, "stalled", stalled)
    await server.serve_stream(NET, "digest", digest_server)
    with trio.fail_after(WAIT):
        streams = [
            await opener.open_stream(NET, b.device_id, "stalled") for _ in range(PEER_STREAMS)
        ]
    async with trio.open_nursery() as writers:
        for stream in streams:
            writers.start_soon(stream.send_all, pattern(3 * MIB))
        await until(lambda: budget_taken(a, b))
        writers.cancel_scope.cancel()
    for stream in streams:
        await stream.aclose()  # no end frame: each stream is cancelled
    await until(lambda: forgotten_by_both(a, b))
    assert await budgets_back(a, b)
    assert (await figures(a))["in_flight_peak"] <= PEER_STREAM_BYTES
    data = pattern(2 * PEER_STREAM_BYTES + 1)
    with trio.fail_after(WAIT * 3):
        async with await opener.open_stream(NET, b.device_id, "digest") as stream:
            await stream.send_all(data)
            await stream.send_eof()
            assert await read_all(stream) == len(data).to_bytes(8, "big") + (
                hashlib.sha256(data).digest()
            )


async def test_streams_to_the_device_itself_take_two_places_and_the_refusal_says_so(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """Both ends of a stream from a daemon to itself are entries of its one table: half of
    MAX_STREAMS such streams fill it, and the refusal of one more says why."""
    solo = await solo_daemon(mesh)
    client = await client_of(solo, nursery)
    await client.serve_stream(NET, "digest", digest_server)
    with trio.fail_after(WAIT * 3):
        held = [
            await client.open_stream(NET, solo.device_id, "digest") for _ in range(MAX_STREAMS // 2)
        ]
        assert (await figures(solo))["open"] == MAX_STREAMS
        with pytest.raises(ClientError) as refused:
            await client.open_stream(NET, solo.device_id, "digest")
    assert refused.value.code == "conflict"
    assert f"{MAX_STREAMS} streams open in {NET}" in str(refused.value)
    assert "a stream from a device to itself takes two places, one for each end" in str(
        refused.value
    )
    for stream in held:
        await stream.aclose()


@pytest.mark.parametrize("to_itself", [False, True], ids=["to_a_peer", "to_itself"])
async def test_removing_the_network_ends_its_streams_with_stopped(
    pair: Pair, to_itself: bool
) -> None:
    """The program of the daemon whose network is removed reads `stopped` (docs/protocol.md:
    "the network was removed"), whether its stream goes to a peer or to its own device: not
    `peer_not_active`, as the removal's goodbye to the peers comes first."""
    opener, server, a, b = pair
    accepted = trio.Event()

    async def wait_forever(stream: BinaryStream) -> None:
        accepted.set()
        await read_all(stream)

    await (opener if to_itself else server).serve_stream(NET, "forever", wait_forever)
    with trio.fail_after(WAIT):
        peer = a if to_itself else b
        async with await opener.open_stream(NET, peer.device_id, "forever") as stream:
            await accepted.wait()
            await a.call("network_remove", network=NET)
            with pytest.raises(StreamError) as ended:
                await read_all(stream)
    assert ended.value.code == "stopped"
