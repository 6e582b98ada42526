"""The broker over real loopback WebSockets: admission, presence, routing and limits."""

import contextlib
import json
import socket
import struct
from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing
from nacl.signing import SigningKey
from trio_websocket import ConnectionClosed, ConnectionRejected

from meshactors.broker.health import NOT_FOUND
from meshactors.broker.limits import BrokerConfig
from meshactors.broker.server import Broker
from meshactors.clock import wall_ms
from meshactors.wire.broker import MAX_CLOCK_SKEW_MS, build_hello, encode_batch
from meshactors.wire.device_id import device_id_from_public_key
from tests.broker.support import (
    WAIT_S,
    StopWatchedBroker,
    closed_with,
    connect,
    connect_from,
    drained_to_close,
    hello,
    joined,
    left,
    next_batch,
    next_text,
    serve_until_stopped,
    start_broker,
)

ALICE, BOB, CAROL = (SigningKey(bytes([seed]) * 32) for seed in (1, 2, 3))


def pk(key: SigningKey) -> bytes:
    return key.verify_key.encode()


def did(key: SigningKey) -> str:
    return device_id_from_public_key(pk(key))


def tampered_signature() -> str:
    fields = json.loads(hello(ALICE, "net"))
    fields["sig"] = json.loads(hello(BOB, "net"))["sig"]
    return json.dumps(fields)


def without_ts() -> str:
    fields = json.loads(hello(ALICE, "net"))
    del fields["ts"]
    return json.dumps(fields)


def old_hello() -> str:
    return build_hello(ALICE, "net", "daemon", now_ms=wall_ms() - 2 * MAX_CLOCK_SKEW_MS)


@pytest.mark.parametrize(
    ("first_message", "code", "reason"),
    [
        pytest.param(lambda: "{nope", 4400, "malformed_hello", id="malformed-json"),
        pytest.param(without_ts, 4400, "malformed_hello", id="missing-field"),
        pytest.param(lambda: b"\x00" * 40, 4400, "malformed_hello", id="binary-hello"),
        pytest.param(tampered_signature, 4401, "bad_signature", id="bad-signature"),
        pytest.param(old_hello, 4401, "stale_timestamp", id="old-timestamp"),
    ],
)
async def test_bad_hello_is_closed_with_its_code_and_reason(
    nursery: trio.Nursery, first_message: Callable[[], str | bytes], code: int, reason: str
) -> None:
    broker, url = await start_broker(nursery)
    async with connect(url) as ws:
        await ws.send_message(first_message())
        closed = await closed_with(ws)
    assert (closed.code, closed.reason) == (code, reason)
    assert broker.figures()[f"rejected_hello_{reason}"] == 1


async def test_replayed_hello_is_refused(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery)
    text = hello(ALICE, "net")
    async with connect(url) as first:
        await first.send_message(text)
        assert json.loads(await first.get_message())["type"] == "welcome"
    async with connect(url) as replay:
        await replay.send_message(text)
        closed = await closed_with(replay)
    assert (closed.code, closed.reason) == (4401, "replayed_nonce")
    assert broker.figures()["rejected_hello_replayed_nonce"] == 1


async def test_network_full_refuses_a_new_device_but_not_a_reconnect(nursery: trio.Nursery) -> None:
    _, url = await start_broker(nursery, max_peers=1)
    async with joined(url, ALICE, "net"), connect(url) as bob:
        await bob.send_message(hello(BOB, "net"))
        closed = await closed_with(bob)
        assert (closed.code, closed.reason) == (4409, "network_full")
        async with joined(url, ALICE, "net") as (_, welcome):
            assert welcome["peers"] == []
        async with joined(url, BOB, "other-net"):
            pass


async def test_silent_client_is_closed_after_the_handshake_timeout(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery, handshake_timeout=0.2)
    async with connect(url) as ws:
        closed = await closed_with(ws)
    assert (closed.code, closed.reason) == (4408, "hello_timeout")
    assert broker.figures()["rejected_hello_hello_timeout"] == 1


async def test_welcome_lists_peers_and_presence_follows_joins_and_leaves(
    nursery: trio.Nursery,
) -> None:
    broker, url = await start_broker(
        nursery, max_message_bytes=4096, outbound_queue_bytes=4096, message_rate=50, message_burst=9
    )
    async with joined(url, ALICE, "net") as (alice, welcome):
        assert welcome == {
            "type": "welcome",
            "v": 1,
            "peers": [],
            "max_message_bytes": 4096,
            "message_rate": 50,
            "message_burst": 9,
        }
        async with joined(url, BOB, "net", role="control-plane") as (_, bob_welcome):
            assert bob_welcome["peers"] == [{"device_id": did(ALICE), "role": "daemon"}]
            joined_notice = json.loads(await alice.get_message())
            assert joined_notice == {
                "type": "presence",
                "event": "join",
                "device_id": did(BOB),
                "role": "control-plane",
            }
            assert broker.figures()["members"] == 2
        await next_text(alice, left(did(BOB)))
        assert broker.figures()["closed_client_closed"] == 1


async def test_a_batch_reaches_each_destination_as_one_message(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery)
    async with (
        joined(url, ALICE, "net") as (alice, _),
        joined(url, BOB, "net") as (bob, _),
        joined(url, CAROL, "net") as (carol, _),
    ):
        batch = [(pk(BOB), b"one"), (pk(CAROL), b"for carol"), (pk(BOB), b"two"), (pk(BOB), b"3")]
        await alice.send_message(encode_batch(batch))
        assert await next_batch(bob) == [
            (pk(ALICE), b"one"),
            (pk(ALICE), b"two"),
            (pk(ALICE), b"3"),
        ]
        assert await next_batch(carol) == [(pk(ALICE), b"for carol")]
        await alice.send_message(encode_batch([(pk(BOB), b"next")]))
        assert await next_batch(bob) == [(pk(ALICE), b"next")], "the batch came as one message"
    figures = broker.figures()
    assert (figures["messages_relayed"], figures["frames_relayed"]) == (3, 5)
    assert figures["frames_dropped"] == 0


async def test_routing_across_networks_is_impossible(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery)
    async with (
        joined(url, ALICE, "net1") as (alice, _),
        joined(url, BOB, "net2") as (bob, _),
        joined(url, CAROL, "net2") as (carol, _),
    ):
        await alice.send_message(encode_batch([(pk(BOB), b"leak?"), (pk(BOB), b"leak!")]))
        notice = await next_text(alice, lambda notice: notice["type"] == "undeliverable")
        assert notice == {"type": "undeliverable", "device_id": did(BOB)}
        await carol.send_message(encode_batch([(pk(BOB), b"sentinel")]))
        assert await next_batch(bob) == [(pk(CAROL), b"sentinel")]
    assert broker.figures()["frames_dropped"] == 2


async def test_oversize_message_closes_1009(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery, max_message_bytes=1024, outbound_queue_bytes=1024)
    async with joined(url, BOB, "net") as (bob, _), joined(url, ALICE, "net") as (alice, _):
        await alice.send_message(encode_batch([(pk(BOB), b"x" * 1024)]))
        assert (await closed_with(alice)).code == 1009
        await next_text(bob, left(did(ALICE)))
    assert broker.figures()["closed_message_too_big"] == 1


async def test_message_rate_over_the_bucket_closes_4429(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery, message_rate=1, message_burst=5)
    async with joined(url, ALICE, "net") as (alice, _):
        for _ in range(20):
            try:
                await alice.send_message(encode_batch([(pk(ALICE), b"loop")]))
            except ConnectionClosed:
                break
        reason = await drained_to_close(alice)
    assert (reason.code, reason.reason) == (4429, "rate_limited")
    assert broker.figures()["frames_relayed"] in (5, 6), "the burst, plus at most 1 s of refill"


async def test_second_connection_of_a_device_replaces_the_first(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery)
    async with (
        joined(url, BOB, "net") as (bob, _),
        joined(url, ALICE, "net", role="old") as (old, _),
    ):
        await next_text(bob, lambda notice: notice.get("role") == "old")
        async with joined(url, ALICE, "net", role="new") as (new, welcome):
            assert welcome["peers"] == [{"device_id": did(BOB), "role": "daemon"}]
            closed = await closed_with(old)
            assert (closed.code, closed.reason) == (4409, "replaced")
            await next_text(bob, left(did(ALICE)))
            rejoined = await next_text(bob, lambda notice: notice["type"] == "presence")
            assert rejoined == {
                "type": "presence",
                "event": "join",
                "device_id": did(ALICE),
                "role": "new",
            }
            await bob.send_message(encode_batch([(pk(ALICE), b"to the new one")]))
            assert await next_batch(new) == [(pk(BOB), b"to the new one")]
        assert broker.figures()["closed_replaced"] == 1


async def test_bad_batch_or_text_closes_only_its_sender(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery)
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        async with joined(url, CAROL, "net") as (carol, _):
            await carol.send_message(b"\x01" * 35)
            closed = await closed_with(carol)
            assert (closed.code, closed.reason) == (4400, "malformed_batch")
        async with joined(url, CAROL, "net") as (carol, _):
            await carol.send_message('{"type":"hello"}')
            closed = await closed_with(carol)
            assert (closed.code, closed.reason) == (4400, "unexpected_text")
        await alice.send_message(encode_batch([(pk(BOB), b"still fine")]))
        assert await next_batch(bob) == [(pk(ALICE), b"still fine")]
    figures = broker.figures()
    assert (figures["closed_malformed_batch"], figures["closed_unexpected_text"]) == (1, 1)


async def test_slow_receiver_is_disconnected_not_buffered(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(
        nursery, outbound_queue_messages=4, outbound_queue_bytes=2 << 20, close_timeout=0.5
    )
    big = encode_batch([(pk(ALICE), bytes(512 << 10))])
    async with joined(url, ALICE, "net"), joined(url, BOB, "net") as (bob, _):
        # Alice never reads again: her socket buffers and then her broker queue fill up.
        alice_gone = trio.Event()

        async def watch() -> None:
            await next_text(bob, left(did(ALICE)))
            alice_gone.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(watch)
            for _ in range(400):
                if alice_gone.is_set():
                    break
                await bob.send_message(big)
            with trio.fail_after(5):
                await alice_gone.wait()
    assert broker.figures()["closed_slow_consumer"] == 1


async def test_big_batches_to_a_member_that_pauses_arrive_whole_and_in_order(
    nursery: trio.Nursery,
) -> None:
    """Alice's socket takes only part of what her one writer sends; the batches queued behind it
    follow whole and in order."""
    _broker, url = await start_broker(nursery)
    batches = [encode_batch([(pk(ALICE), bytes([n]) * (512 << 10))]) for n in range(6)]
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        for batch in batches:  # Alice reads nothing meanwhile
            await bob.send_message(batch)
        for n in range(6):
            with trio.fail_after(5):
                assert await next_batch(alice) == [(pk(BOB), bytes([n]) * (512 << 10))]


async def test_unanswered_ping_drops_the_connection(nursery: trio.Nursery) -> None:
    broker, url = await start_broker(nursery, ping_interval=0.1, pong_timeout=0.2)
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        # Alice stops reading: two unread messages stall her client's reader, so no pongs.
        await bob.send_message(encode_batch([(pk(ALICE), b"1")]))
        await bob.send_message(encode_batch([(pk(ALICE), b"2")]))
        await next_text(bob, left(did(ALICE)))
        reason = await drained_to_close(alice)
    assert (reason.code, reason.reason) == (4408, "pong_timeout")
    assert broker.figures()["closed_pong_timeout"] == 1


async def test_a_member_heard_outlives_its_unanswered_pings_until_it_falls_silent(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Alice's pongs wait behind messages she does not read, but she keeps sending: busy, not
    gone. A whole pong deadline without a word from her ends her session."""
    broker, url = await start_broker(nursery, ping_interval=10, pong_timeout=20, pong_ceiling=200)
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        await bob.send_message(encode_batch([(pk(ALICE), b"1")]))
        await bob.send_message(encode_batch([(pk(ALICE), b"2")]))  # her reader stalls
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(10)  # the broker pings her
        for n in range(5):
            await alice.send_message(encode_batch([(pk(BOB), b"%d" % n)]))
            assert await next_batch(bob) == [(pk(ALICE), b"%d" % n)]
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(20)
            await trio.testing.wait_all_tasks_blocked()
            assert broker.figures()["closed_pong_timeout"] == 0
        mock_clock.jump(20)  # a deadline without a word from her
        reason = await drained_to_close(alice)
    assert (reason.code, reason.reason) == (4408, "pong_timeout")
    assert broker.figures()["closed_pong_timeout"] == 1


async def test_a_stopped_member_written_to_is_ended_once_its_ping_waits_the_ceiling(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Alice stopped (SIGSTOP, a suspended laptop): she reads and sends nothing, but Bob's
    messages to her keep landing in her socket buffer, so the broker's writes to her move all
    the time. Her ping, unanswered for the pong ceiling, ends her session all the same."""
    broker, url = await start_broker(nursery, ping_interval=10, pong_timeout=20, pong_ceiling=60)
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        await bob.send_message(encode_batch([(pk(ALICE), b"1")]))
        await bob.send_message(encode_batch([(pk(ALICE), b"2")]))  # her reader stalls
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(10)  # the broker pings her
        for n in range(6):  # written to in every pong deadline, for 60 s
            await bob.send_message(encode_batch([(pk(ALICE), b"%d" % n)]))
            await trio.testing.wait_all_tasks_blocked()
            assert broker.figures()["closed_pong_timeout"] == 0
            mock_clock.jump(10)
        await trio.testing.wait_all_tasks_blocked()
        assert broker.figures()["closed_pong_timeout"] == 1
        await next_text(bob, left(did(ALICE)))
        reason = await drained_to_close(alice)
    assert (reason.code, reason.reason) == (4408, "pong_timeout")


async def test_unknown_path_and_connection_limit_are_refused_at_upgrade(
    nursery: trio.Nursery,
) -> None:
    broker, url = await start_broker(nursery, max_connections=1)
    with pytest.raises(ConnectionRejected) as wrong_path:
        async with connect(url.replace("/v1", "/v2")):
            pass
    assert wrong_path.value.status_code == 404
    assert wrong_path.value.body == NOT_FOUND
    async with connect(url):
        with pytest.raises(ConnectionRejected) as over_limit:
            async with connect(url):
                pass
        assert over_limit.value.status_code == 503
    figures = broker.figures()
    assert (figures["rejected_path"], figures["rejected_connection_limit"]) == (1, 1)


async def test_garbage_and_reset_connections_do_not_disturb_the_broker(
    nursery: trio.Nursery,
) -> None:
    broker, url = await start_broker(nursery)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for _ in range(20):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.send(b"NOT HTTP AT ALL\r\n\r\n")
        sock.close()  # with linger 0: a reset while the broker answers 400
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        await alice.send_message(encode_batch([(pk(BOB), b"unharmed")]))
        assert await next_batch(bob) == [(pk(ALICE), b"unharmed")]
    assert broker.figures()["connection_errors"] == 0


async def test_shutdown_says_going_away_without_waiting_out_the_close_timeout(
    nursery: trio.Nursery,
) -> None:
    broker = Broker(BrokerConfig(close_timeout=3))
    port, shutdown, stopped = await serve_until_stopped(nursery, broker)
    url = f"ws://127.0.0.1:{port}/v1"
    async with joined(url, ALICE, "net") as (alice, _), connect(url) as silent:
        shutdown.cancel()
        closed = await closed_with(alice)
        assert (closed.code, closed.reason) == (1001, "going_away")
        assert (await closed_with(silent)).code == 1006, "no hello yet: just dropped"
        with trio.fail_after(1):
            await stopped.wait()
    assert broker.figures()["closed_going_away"] == 1


@attrs.define
class HandledAfterTheStop(StopWatchedBroker):
    """A broker that begins handling a connection only once _stop ran: the scheduler may run
    the stop between a connection's accept and its handler's first step."""

    arrived: trio.Event = attrs.field(init=False, factory=trio.Event)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.arrived.set()
        await self.stop_ran.wait()
        await super()._connection(stream)


async def test_a_connection_handled_after_the_stop_began_is_dropped_at_once(
    nursery: trio.Nursery,
) -> None:
    # both long: the stop must not wait for either (a deadlock guard, not a speed bound)
    broker = HandledAfterTheStop(BrokerConfig(handshake_timeout=3600, close_timeout=3600))
    port, shutdown, stopped = await serve_until_stopped(nursery, broker)
    async with await _raw_upgrade(port, "/v1") as stream:
        with trio.fail_after(WAIT_S):
            await broker.arrived.wait()
        shutdown.cancel()
        with trio.fail_after(WAIT_S):
            await stopped.wait()
        try:
            answer = await _read_to_eof(stream)
        except trio.BrokenResourceError:  # dropped with its request unread: a reset
            answer = b""
        assert b" 101 " not in answer  # not upgraded


async def _raw_upgrade(port: int, path: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return stream


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the broker sends until it closes the connection (the client stays silent)."""
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some():
            received += chunk
    return received


async def test_refused_upgrade_and_oversize_close_end_the_tcp_connection(
    nursery: trio.Nursery,
) -> None:
    """trio-websocket leaves the stream open after these; the broker closes it itself."""
    _broker, url = await start_broker(nursery, max_message_bytes=1024, outbound_queue_bytes=1024)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    refused = await _raw_upgrade(port, "/v2")
    assert (await _read_to_eof(refused)).startswith(b"HTTP/1.1 404")
    oversize = await _raw_upgrade(port, "/v1")
    accepted = b""
    with trio.fail_after(5):  # RFC 6455 4.1: a client sends nothing more until the server answers
        while b"\r\n\r\n" not in accepted:
            accepted += await oversize.receive_some()
    assert accepted.startswith(b"HTTP/1.1 101")
    header = struct.pack("!BBH", 0x82, 0x80 | 126, 2048) + bytes(4)  # masked, 2048 bytes
    await oversize.send_all(header + bytes(2048))
    received = await _read_to_eof(oversize)
    assert b"\x88" in received and struct.pack("!H", 1009) in received  # the close frame, then EOF


@pytest.mark.parametrize(
    ("sent", "then_eof", "answer"),
    [
        pytest.param(b"", True, b"", id="nothing"),
        pytest.param(
            b"GET /v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websoc", True, b"HTTP/1.1 400", id="half"
        ),
        pytest.param(
            b"GET /v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            False,
            b"HTTP/1.1 400",
            id="bad-request",
        ),
    ],
)
async def test_a_connection_whose_upgrade_cannot_go_on_ends_at_once(
    nursery: trio.Nursery, sent: bytes, then_eof: bool, answer: bytes
) -> None:
    """A connection that ends before its request is whole, or whose request is answered, ends
    at once: it does not hold its place under max_connections for handshake_timeout (an hour
    here)."""
    broker, url = await start_broker(nursery, handshake_timeout=3600, max_connections=1)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(sent)
    if then_eof:
        await stream.send_eof()
    # the broker closed its end
    assert (await _read_to_eof(stream)).startswith(answer)
    await trio.testing.wait_all_tasks_blocked()  # the broker's handler has finished with it
    assert broker.figures()["connections"] == 0
    async with joined(url, ALICE, "net"):
        pass


async def test_a_connection_reset_before_its_upgrade_request_ends_at_once(
    nursery: trio.Nursery,
) -> None:
    """A reset (no EOF to read back) in the middle of the request ends the connection as an EOF
    does."""
    broker, url = await start_broker(nursery, handshake_timeout=3600)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /v1 HTTP/1.1\r\n")
    await _connections_become(broker, 1)
    await trio.testing.wait_all_tasks_blocked()  # the broker waits for the rest
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()  # lingering 0 s: the close is a reset
    await _connections_become(broker, 0)


async def test_a_connection_reset_before_its_first_byte_is_no_error(
    nursery: trio.Nursery,
) -> None:
    """A port scanner's connect and reset: the broker reads the reset itself (looking for a
    health request), and counts and logs it as nothing wrong with the broker."""
    broker, url = await start_broker(nursery, handshake_timeout=3600)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await _connections_become(broker, 1)
    await trio.testing.wait_all_tasks_blocked()  # the broker waits for the first bytes
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()  # lingering 0 s: the close is a reset
    await _connections_become(broker, 0)
    assert broker.figures()["connection_errors"] == 0


async def _connections_become(broker: Broker, count: int) -> None:
    """Return once the broker holds `count` connections. The figure announces no change, so it
    is looked at again whenever every task waits (a deadline fails the test)."""
    with trio.fail_after(5):
        while broker.figures()["connections"] != count:
            await trio.testing.wait_all_tasks_blocked()


async def test_an_unadmitted_client_cannot_make_the_broker_read_a_big_hello(
    nursery: trio.Nursery,
) -> None:
    """Before admission the broker reads PRE_ADMISSION_BYTES, not a max_message_bytes message:
    a 256 KiB hello is never read whole (which would refuse it as malformed at once), it
    times out."""
    broker, url = await start_broker(nursery, handshake_timeout=0.5, close_timeout=1)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stream = await _raw_upgrade(port, "/v1")
    accepted = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in accepted:
            accepted += await stream.receive_some()
    assert accepted.startswith(b"HTTP/1.1 101")
    size = 256 << 10  # under max_message_bytes (1 MiB), over PRE_ADMISSION_BYTES
    header = struct.pack("!BBQ", 0x81, 0x80 | 127, size) + bytes(4)  # masked TEXT, zero mask

    async def send_hello() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(header + b"a" * size)

    nursery.start_soon(send_hello)
    close_frame = b"\x88\x0f" + struct.pack("!H", 4408) + b"hello_timeout"
    received = b""
    with trio.fail_after(5):  # not to EOF: closing on the unread hello resets the connection
        while len(received) < len(close_frame):
            received += await stream.receive_some()
    assert received == close_frame
    figures = broker.figures()
    assert (figures["rejected_hello_hello_timeout"], figures["rejected_hello_malformed_hello"]) == (
        1,
        0,
    )


async def test_a_client_filling_the_nonce_memory_is_refused_while_others_still_join(
    nursery: trio.Nursery,
) -> None:
    """The nonce memory is shared by client address: 127.0.0.2 fills it, 127.0.0.3 gets in."""
    broker, url = await start_broker(nursery, nonce_entries=2)
    flood = "127.0.0.2"
    async with (
        joined(url, ALICE, "net", local_host=flood),
        joined(url, BOB, "net", local_host=flood),
    ):
        async with joined(url, CAROL, "net", local_host="127.0.0.3") as (_, welcome):
            assert {peer["device_id"] for peer in welcome["peers"]} == {did(ALICE), did(BOB)}
        async with connect_from(url, flood) as again:
            await again.send_message(hello(ALICE, "net"))
            closed = await closed_with(again)
    assert (closed.code, closed.reason) == (1013, "broker_busy")
    figures = broker.figures()
    assert (figures["nonces_evicted"], figures["rejected_hello_broker_busy"]) == (1, 1)


async def test_a_member_that_sends_but_never_reads_is_ended_when_a_write_stalls(
    nursery: trio.Nursery,
) -> None:
    """Its messages keep the keepalive content, and its queue is large enough to hold all
    that waits for it: only the writer's own deadline ends it, as slow_consumer."""
    broker, url = await start_broker(
        nursery,
        send_timeout=0.5,
        outbound_queue_bytes=256 << 20,
        close_timeout=0.5,
        ping_interval=0.2,
        pong_timeout=2,
    )
    big = encode_batch([(pk(ALICE), bytes(512 << 10))])
    async with joined(url, ALICE, "net") as (alice, _), joined(url, BOB, "net") as (bob, _):
        alice_gone = trio.Event()

        async def watch() -> None:
            await next_text(bob, left(did(ALICE)))
            alice_gone.set()

        async def alice_only_talks() -> None:  # she never reads again, but is heard
            with contextlib.suppress(ConnectionClosed):
                while not alice_gone.is_set():
                    await alice.send_message(encode_batch([(pk(BOB), b"still here")]))
                    await trio.sleep(0.05)  # well inside each pong deadline

        async with trio.open_nursery() as inner:
            inner.start_soon(watch)
            inner.start_soon(alice_only_talks)
            for _ in range(160):  # 80 MiB: more than the sockets' buffers hold
                if alice_gone.is_set():
                    break
                await bob.send_message(big)
            with trio.fail_after(5):
                await alice_gone.wait()
    figures = broker.figures()
    assert (figures["closed_slow_consumer"], figures["closed_pong_timeout"]) == (1, 0)
