"""The link: full-jitter backoff within documented bounds, a drop fails waiting senders, and
it comes up over wss:// as over ws://."""

from __future__ import annotations

import contextlib
import json
import random
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from meshactors.actors import Node, run_root
from meshactors.network import link as link_module
from meshactors.network.link import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    PACE_SHARE,
    SHORT_SESSION,
    InboundRecords,
    Link,
    LinkDown,
    LinkLost,
    LinkOutbound,
    LinkUp,
    backoff_delay,
)
from meshactors.network.link_errors import LinkErrorKind
from meshactors.wire.broker import (
    MESSAGE_BURST,
    MESSAGE_RATE_PER_S,
    BrokerProtocolError,
    PresenceJoin,
    decode_batch,
    decode_welcome,
    encode_batch,
    encode_notice,
)
from meshactors.wire.device_id import device_id_from_public_key
from tests.broker.support import start_broker
from tests.network.conftest import WAIT
from tests.network.linksink import LinkEventRecorder
from tests.network.tlsserver import TEST_CA, forwarding_to, serve_tls


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not fixed
        assert min(delays) < ceiling * 0.2
    assert backoff_delay(10_000, rng) <= BACKOFF_CAP


def _refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1"


async def test_an_unreachable_broker_is_retried_with_backoff_and_core_hears_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    urls = [_refused_url(), _refused_url()]
    heard = LinkEventRecorder()
    link = Link("net1", urls, SigningKey.generate(), heard, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, link, Node(name="link", kind="link"))
        await trio.sleep(60)  # virtual time
        # Retry k waits at most BACKOFF_BASE * 2**k: 60 s hold the first seven (ceilings sum
        # to 31.75 s) whatever the jitter draws.
        assert link.failures >= 7
        assert link.state in ("backoff", "connecting")
        assert link.connects == 0
        assert link.last_error is not None
        states = [status.state for status in heard.statuses]
        assert states[: 2 * link.failures] == ["connecting", "backoff"] * link.failures
        assert heard.statuses[1].error is not None
        assert heard.statuses[1].error.kind is LinkErrorKind.REFUSED
        with pytest.raises(trio.WouldBlock):
            heard.events.receive_nowait()  # never up
        nursery.cancel_scope.cancel()
    assert link.state == "stopped"
    assert heard.statuses[-1].state == "stopped"


async def test_a_broker_left_for_silence_is_not_the_first_tried_again(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A broker that welcomed us and then hung (our keepalive left it) is not tried first
    again: the next in the list is."""
    say, said = trio.open_memory_channel[str](1)
    async with trio.open_nursery() as nursery:
        link, heard, urls = await _link_to_two(nursery, _deaf_broker(said), _welcoming)
        outbound = (await heard.up()).outbound
        for sealed in (b"1", b"2"):  # two messages the broker never reads: its reader stalls
            await trio.testing.wait_all_tasks_blocked()
            assert outbound.send_nowait(bytes(32), sealed)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(link_module.LINK_PING_INTERVAL)  # our ping, never answered
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(link_module.LINK_PONG_TIMEOUT)
        assert isinstance(await heard.events.receive(), LinkLost)
        assert link.last_error is not None and link.last_error.kind is LinkErrorKind.TIMEOUT
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(BACKOFF_CAP)
        assert (await heard.up()).url == urls[1]
        nursery.cancel_scope.cancel()
        say.close()


async def test_a_broker_that_closed_our_session_is_the_first_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A broker that closed a session that held (a restart, a kick) is tried first again, not
    the next in the list: when the brokers listed are not one cluster, its peers are still
    there."""

    async def closing(request: WebSocketRequest) -> None:
        ws = await _welcomed(request)
        await trio.sleep(SHORT_SESSION)  # virtual time: the session held
        await ws.aclose()

    async with trio.open_nursery() as nursery:
        _, heard, urls = await _link_to_two(nursery, closing, _welcoming)
        with trio.fail_after(SHORT_SESSION + WAIT):
            assert (await heard.up()).url == urls[0]
            assert isinstance(await heard.events.receive(), LinkLost)
            assert (await heard.up()).url == urls[0]
        nursery.cancel_scope.cancel()


async def _closing_at_once(request: WebSocketRequest) -> None:
    """A broker that welcomes the link and closes the connection at once."""
    await (await _welcomed(request)).aclose()


async def test_a_broker_that_closes_each_session_at_once_is_left_for_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session shorter than SHORT_SESSION is a failed attempt: the next broker in the list
    is tried, where the one that welcomed and closed used to be tried again for ever."""
    async with trio.open_nursery() as nursery:
        link, heard, urls = await _link_to_two(nursery, _closing_at_once, _welcoming)
        with trio.fail_after(WAIT):
            assert (await heard.up()).url == urls[0]
            assert isinstance(await heard.events.receive(), LinkLost)
            assert (await heard.up()).url == urls[1]
        assert (link.connects, link.failures) == (2, 1)
        nursery.cancel_scope.cancel()


FLAPPING_FOR = 60.0  # virtual seconds a link is left with a broker closing each session at once


async def test_a_broker_that_closes_each_session_at_once_is_retried_with_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Sessions shorter than SHORT_SESSION reset no backoff: it grows as for a broker that
    refuses, and each counts as a failure. Reset by each welcome, every retry waited at most
    BACKOFF_BASE: at least FLAPPING_FOR / BACKOFF_BASE sessions in FLAPPING_FOR."""
    async with trio.open_nursery() as nursery:
        link, _ = await _link_to(nursery, _closing_at_once)
        await trio.sleep(FLAPPING_FOR)
        assert link.connects < FLAPPING_FOR / BACKOFF_BASE
        # Retry k waits at most BACKOFF_BASE * 2**k: FLAPPING_FOR holds the first seven
        # (ceilings sum to 31.75 s) whatever the jitter draws.
        assert 7 <= link.failures == link.connects
        nursery.cancel_scope.cancel()


OUTAGE_REFUSALS = 8  # attempts a restarting broker refuses: the backoff's ceiling is at the cap
BRIEF_SESSION = SHORT_SESSION / 5  # virtual seconds of the one short session after the outage


async def test_one_short_session_after_an_outage_is_retried_at_the_first_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A welcome forgets the failures before it: a broker back from an outage that closes its
    first session early (restarted again) is retried within BACKOFF_BASE, not at the backoff
    its outage built up (up to BACKOFF_CAP)."""
    requests = 0

    async def restarting(request: WebSocketRequest) -> None:
        nonlocal requests
        requests += 1
        if requests <= OUTAGE_REFUSALS:
            await request.reject(503)
            return
        ws = await _welcomed(request)
        if requests == OUTAGE_REFUSALS + 1:
            await trio.sleep(BRIEF_SESSION)
            await ws.aclose()
            return
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        link, heard = await _link_to(nursery, restarting)
        with trio.fail_after(BACKOFF_CAP * OUTAGE_REFUSALS):
            await heard.up()
            assert isinstance(await heard.events.receive(), LinkLost)
            lost = trio.current_time()
            await heard.up()
        assert trio.current_time() - lost <= BACKOFF_BASE
        assert (link.connects, link.failures) == (2, OUTAGE_REFUSALS + 1)
        nursery.cancel_scope.cancel()


Broker = Callable[[WebSocketRequest], Awaitable[None]]


async def _welcoming(request: WebSocketRequest) -> None:
    """A broker that welcomes the link and keeps the connection."""
    await _welcomed(request)
    await trio.sleep_forever()


async def _link_to_two(
    nursery: trio.Nursery, first: Broker, second: Broker
) -> tuple[Link, LinkEventRecorder, list[str]]:
    """A link (its jitter seeded) running in `nursery`, listing `first` then `second`, each
    served on a free port; with their URLs."""
    servers = [
        await nursery.start(serve_websocket, broker, "127.0.0.1", 0, None)
        for broker in (first, second)
    ]
    urls = [f"ws://127.0.0.1:{server.port}/v1" for server in servers]
    heard = LinkEventRecorder()
    link = Link("net1", urls, SigningKey.generate(), heard, rng=random.Random(1))
    await nursery.start(run_root, link, Node(name="link", kind="link"))
    return link, heard, urls


async def _welcomed(request: WebSocketRequest, **limits: int) -> WebSocketConnection:
    """Accept the link's connection, read its hello and welcome it (announcing `limits`)."""
    ws = await request.accept()
    await ws.get_message()  # the hello
    await ws.send_message(json.dumps({"type": "welcome", "v": 1, "peers": [], **limits}))
    return ws


async def _link_to(
    nursery: trio.Nursery, broker: Callable[[WebSocketRequest], Awaitable[None]]
) -> tuple[Link, LinkEventRecorder]:
    """A link (its jitter seeded) running in `nursery`, to `broker` served on a free port."""
    server = await nursery.start(serve_websocket, broker, "127.0.0.1", 0, None)
    heard = LinkEventRecorder()
    url = f"ws://127.0.0.1:{server.port}/v1"
    link = Link("net1", [url], SigningKey.generate(), heard, rng=random.Random(1))
    await nursery.start(run_root, link, Node(name="link", kind="link"))
    return link, heard


async def test_senders_waiting_on_a_full_queue_fail_with_link_down_when_it_drops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_module, "OUTBOUND_QUEUE", 2)
    hang_up = trio.Event()

    async def stalled_broker(request: WebSocketRequest) -> None:
        """Welcomes, then reads nothing until told to close the connection."""
        ws = await _welcomed(request)
        await hang_up.wait()
        await ws.aclose(1011, "gone")

    async with trio.open_nursery() as nursery:
        link, heard = await _link_to(nursery, stalled_broker)
        with trio.fail_after(WAIT):
            outbound = (await heard.up()).outbound
        failures: list[str] = []

        async def sender() -> None:
            try:
                while True:
                    await outbound.send(bytes(32), bytes(256 * 1024))
            except LinkDown as exc:
                failures.append(str(exc))

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()  # the socket is full, then the queue
        assert link.figures()["queued"] == 2
        hang_up.set()
        with trio.fail_after(WAIT):
            assert isinstance(await heard.events.receive(), LinkLost)
        await trio.testing.wait_all_tasks_blocked()
        (failure,) = failures  # blocked in send, or sending as the drop happened
        assert failure == "network net1: the broker link dropped"
        with pytest.raises(LinkDown):
            outbound.send_nowait(bytes(32), b"after the drop")
        nursery.cancel_scope.cancel()


Batches = trio.MemoryReceiveChannel[list[tuple[bytes, bytes]]]


async def _recorded_link(
    nursery: trio.Nursery, **limits: int
) -> tuple[Link, LinkOutbound, Batches]:
    """A link that is up, to a broker (announcing `limits` in its welcome) passing on every
    batch it reads."""
    received, batches = trio.open_memory_channel[list[tuple[bytes, bytes]]](1000)

    async def recording_broker(request: WebSocketRequest) -> None:
        ws = await _welcomed(request, **limits)
        while True:
            message = await ws.get_message()
            assert isinstance(message, bytes)
            await received.send(decode_batch(message))

    link, heard = await _link_to(nursery, recording_broker)
    with trio.fail_after(WAIT):
        outbound = (await heard.up()).outbound
    return link, outbound, batches


async def test_records_go_through_the_one_writer_and_a_burst_leaves_as_one_message() -> None:
    async with trio.open_nursery() as nursery:
        link, outbound, batches = await _recorded_link(nursery)
        to = bytes(32)
        await trio.testing.wait_all_tasks_blocked()  # the writer idles
        assert outbound.send_nowait(to, b"alone")
        assert link.figures()["batches_out"] == 0, "the sender's task never writes to the socket"
        with trio.fail_after(WAIT):
            assert await batches.receive() == [(to, b"alone")]
        await trio.testing.wait_all_tasks_blocked()
        burst = [b"%d" % n for n in range(200)]
        assert all(outbound.send_nowait(to, sealed) for sealed in burst)  # no yield between them
        with trio.fail_after(WAIT):
            assert [sealed for _, sealed in await batches.receive()] == burst  # one message
        nursery.cancel_scope.cancel()


async def test_messages_keep_to_the_share_of_the_rate_the_welcome_announces(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        # ours: PACE_SHARE of 20 messages/s and a burst of 3: 18/s, and 2 whole tokens at once
        _, outbound, batches = await _recorded_link(nursery, message_rate=20, message_burst=3)
        assert 2 <= 3 * PACE_SHARE < 3
        for sealed in (b"0", b"1"):  # the burst: each its own message
            await trio.testing.wait_all_tasks_blocked()
            assert outbound.send_nowait(bytes(32), sealed)
            with trio.fail_after(WAIT):
                assert [sealed for _, sealed in await batches.receive()] == [sealed]
        later = [b"2", b"3", b"4", b"5"]
        assert all(outbound.send_nowait(bytes(32), sealed) for sealed in later)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            batches.receive_nowait()  # no token for a third message yet
        mock_clock.jump(1 / (20 * PACE_SHARE))  # one more token
        with trio.fail_after(WAIT):
            assert [sealed for _, sealed in await batches.receive()] == later  # one message
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"message_rate": 0}, "message_rate"),
        ({"message_rate": "2000"}, "message_rate"),
        ({"message_rate": True}, "message_rate"),
        ({"message_burst": 0}, "message_burst"),
        ({"message_burst": 2.5}, "message_burst"),
    ],
)
def test_a_welcome_with_bad_limits_is_refused(limits: dict[str, object], reason: str) -> None:
    welcome = json.dumps({"type": "welcome", "v": 1, "peers": [], **limits})
    with pytest.raises(BrokerProtocolError, match=reason):
        decode_welcome(welcome)


def test_a_welcome_without_rate_limits_gets_the_documented_defaults() -> None:
    welcome = decode_welcome(json.dumps({"type": "welcome", "v": 1, "peers": []}))
    assert (welcome.message_rate, welcome.message_burst) == (MESSAGE_RATE_PER_S, MESSAGE_BURST)


def _deaf_broker(
    said: trio.MemoryReceiveChannel[str],
) -> Callable[[WebSocketRequest], Awaitable[None]]:
    """A broker that reads nothing after the hello and says what the test sends it on `said`."""

    async def deaf_broker(request: WebSocketRequest) -> None:
        ws = await _welcomed(request)
        async for text in said:
            await ws.send_message(text)

    return deaf_broker


async def _pinging_a_deaf_broker(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> tuple[Link, LinkEventRecorder, Callable[[], Awaitable[None]]]:
    """A link up to a deaf broker whose reader stalled (so its pongs wait), just after our
    first ping; and a call that makes the broker say something the link hears."""
    say, said = trio.open_memory_channel[str](10)
    link, heard = await _link_to(nursery, _deaf_broker(said))
    outbound = (await heard.up()).outbound
    for sealed in (b"1", b"2"):  # two messages the broker never reads: its reader stalls
        await trio.testing.wait_all_tasks_blocked()
        assert outbound.send_nowait(bytes(32), sealed)
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(link_module.LINK_PING_INTERVAL)  # our ping, unanswered from now on
    await trio.testing.wait_all_tasks_blocked()
    peer = device_id_from_public_key(SigningKey.generate().verify_key.encode())

    async def broker_talks() -> None:
        await say.send(encode_notice(PresenceJoin(peer, "daemon")))
        assert isinstance(await heard.events.receive(), PresenceJoin)
        await trio.testing.wait_all_tasks_blocked()

    return link, heard, broker_talks


async def test_a_broker_heard_outlives_unanswered_pings_and_a_silent_one_is_left(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """The broker reads nothing (its pongs stall) but keeps talking: busy, not gone. A whole pong
    deadline of silence drops the link (the pong ceiling, out of the way here, is the next
    test's)."""
    monkeypatch.setattr(link_module, "LINK_PONG_CEILING", 10 * link_module.LINK_PONG_TIMEOUT)
    async with trio.open_nursery() as nursery:
        link, heard, broker_talks = await _pinging_a_deaf_broker(nursery, mock_clock)
        for _ in range(5):
            await broker_talks()
            mock_clock.jump(link_module.LINK_PONG_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
            assert link.state == "up"
        mock_clock.jump(link_module.LINK_PONG_TIMEOUT)  # silence: we close the connection
        assert isinstance(await heard.events.receive(), LinkLost)
        assert link.last_error is not None
        assert link.last_error.kind is LinkErrorKind.TIMEOUT
        assert "sent nothing" in link.last_error.reason
        assert link.connects == 1
        nursery.cancel_scope.cancel()


async def test_a_broker_heard_but_leaving_our_ping_unanswered_is_left_at_the_ceiling(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The broker reads nothing (its pongs stall) and talks in every pong deadline; once our
    ping waited LINK_PONG_CEILING the link is dropped all the same, and says why."""
    async with trio.open_nursery() as nursery:
        link, heard, broker_talks = await _pinging_a_deaf_broker(nursery, mock_clock)
        waited = 0.0
        while waited < link_module.LINK_PONG_CEILING:  # heard in every pong deadline
            assert link.state == "up"
            await broker_talks()
            mock_clock.jump(link_module.LINK_PONG_TIMEOUT)
            waited += link_module.LINK_PONG_TIMEOUT
            await trio.testing.wait_all_tasks_blocked()
        assert link.last_error is not None
        assert link.last_error.kind is LinkErrorKind.TIMEOUT
        assert "left our ping unanswered" in link.last_error.reason
        assert isinstance(await heard.events.receive(), LinkLost)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("core_stuck", [False, True])
async def test_a_broker_heard_but_not_reading_is_left_once_a_message_waits_too_long(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock, core_stuck: bool
) -> None:
    """The broker keeps talking, so the keepalive is content, but reads nothing: our writer is
    stuck in a message the full socket cannot take. Once it has waited LINK_SEND_TIMEOUT the
    connection ends, the link says why, counts it and connects again; even when core stopped
    taking what the broker said at the end (trio-websocket's reader is then parked on a full
    queue that the cut close leaves open)."""
    monkeypatch.setattr(link_module, "OUTBOUND_QUEUE", 2)
    say, said = trio.open_memory_channel[str](10)
    peer = device_id_from_public_key(SigningKey.generate().verify_key.encode())
    async with trio.open_nursery() as nursery:
        link, heard = await _link_to(nursery, _deaf_broker(said))
        outbound = (await heard.up()).outbound

        await _flood(nursery, link, outbound)
        waited = 0.0
        while waited < link_module.LINK_SEND_TIMEOUT:  # heard in every pong deadline
            assert link.state == "up"
            waited += link_module.LINK_PONG_TIMEOUT
            if core_stuck and waited >= link_module.LINK_SEND_TIMEOUT:
                heard.hold = trio.Event()
                for _ in range(3):  # one held by our reader, one queued, one parks theirs
                    await say.send(encode_notice(PresenceJoin(peer, "daemon")))
            else:
                await say.send(encode_notice(PresenceJoin(peer, "daemon")))
                assert isinstance(await heard.events.receive(), PresenceJoin)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(link_module.LINK_PONG_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
        if heard.hold is not None:  # core takes what waited, then the connection must end
            heard.hold.set()
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(link_module.LEAVE_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
        assert heard.statuses[-1].state == "backoff"  # done with the connection
        waiting = heard.events.statistics().current_buffer_used
        kinds = [type(heard.events.receive_nowait()) for _ in range(waiting)]
        assert kinds[-1] is LinkLost and set(kinds[:-1]) <= {PresenceJoin}
        assert link.last_error is not None
        assert link.last_error.kind is LinkErrorKind.TIMEOUT
        assert "took no message" in link.last_error.reason
        figures = link.figures()
        assert figures["send_timeouts"] == 1
        assert figures["dropped"] >= 3  # the message cut short and the two queued behind it
        mock_clock.jump(BACKOFF_CAP)
        assert isinstance(await heard.events.receive(), LinkUp)
        assert link.connects == 2
        nursery.cancel_scope.cancel()


async def test_a_ping_met_while_we_close_ends_the_connection_not_the_link(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Core is stuck, so we read nothing: our ping's pong and a ping from the broker wait unread,
    and after a silent deadline we close. trio-websocket then answers that ping on a closing
    connection and raises (python-trio/trio-websocket#184): that connection ends, the link
    stays, says why it closed and connects again."""
    ready = trio.Event()

    async def talkative_broker(request: WebSocketRequest) -> None:
        ws = await _welcomed(request)
        await ready.wait()
        for n in range(3):  # one for our reader, one in its queue, one it holds
            await ws.send_message(encode_batch([(bytes(32), b"%d" % n)]))
        async with trio.open_nursery() as pings:
            pings.start_soon(ws.ping)  # unread behind them
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        link, heard = await _link_to(nursery, talkative_broker)
        await heard.up()
        heard.hold = trio.Event()
        ready.set()
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(link_module.LINK_PING_INTERVAL)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(link_module.LINK_PONG_TIMEOUT)  # silent: we close
        await trio.testing.wait_all_tasks_blocked()
        heard.hold.set()
        while not isinstance(event := await heard.events.receive(), LinkLost):
            assert isinstance(event, InboundRecords)
        assert link.last_error is not None
        assert link.last_error.kind is LinkErrorKind.TIMEOUT
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(BACKOFF_CAP)
        assert isinstance(await heard.events.receive(), LinkUp)
        nursery.cancel_scope.cancel()


async def _flood(nursery: trio.Nursery, link: Link, outbound: LinkOutbound) -> None:
    """Send large records until the link goes down; return once the socket and the link's
    queue are full."""

    async def sender() -> None:
        with contextlib.suppress(LinkDown):
            while True:
                await outbound.send(bytes(32), bytes(256 * 1024))

    nursery.start_soon(sender)
    await trio.testing.wait_all_tasks_blocked()  # the socket is full, then the queue
    assert link.figures()["queued"] == 2


async def _link_to_a_broker_by_hand(
    nursery: trio.Nursery,
) -> tuple[Link, LinkEventRecorder, trio.SocketStream, WSConnection]:
    """A link to a broker played by hand on a free port, upgraded: the test holds the broker's
    socket and its wsproto state, and decides what is read and sent from then on."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    heard = LinkEventRecorder()
    url = f"ws://127.0.0.1:{listener.socket.getsockname()[1]}/v1"
    link = Link("net1", [url], SigningKey.generate(), heard, rng=random.Random(1))
    await nursery.start(run_root, link, Node(name="link", kind="link"))
    async with listener:
        stream = await listener.accept()
    ws = WSConnection(ConnectionType.SERVER)
    while not any(isinstance(event, Request) for event in ws.events()):
        ws.receive_data(await stream.receive_some())
    await stream.send_all(ws.send(AcceptConnection()))
    return link, heard, stream, ws


async def _closed_by_link(stream: trio.SocketStream) -> bool:
    """Whether the link closed its end: reading what it sent (all the kernel holds, once every
    task is blocked) reaches the end of the stream."""
    ended = trio.Event()

    async def read_to_the_end() -> None:
        while await stream.receive_some():
            pass
        ended.set()

    async with trio.open_nursery() as reading:
        reading.start_soon(read_to_the_end)
        await trio.testing.wait_all_tasks_blocked()
        reading.cancel_scope.cancel()
    return ended.is_set()


async def test_a_connection_whose_close_reply_is_stuck_is_left_with_its_socket_closed(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """The broker reads nothing, so our writer is stuck in a message, then it closes: our reply
    to its Close waits behind that write, in trio-websocket's reader. When the session ends
    (the next ping finds the connection closed) the link closes the socket itself; left to
    trio-websocket, it stayed open past LEAVE_TIMEOUT's cut, for the garbage collector."""
    monkeypatch.setattr(link_module, "OUTBOUND_QUEUE", 2)
    async with trio.open_nursery() as nursery:
        link, heard, stream, ws = await _link_to_a_broker_by_hand(nursery)
        while not any(isinstance(event, TextMessage) for event in ws.events()):  # the hello
            ws.receive_data(await stream.receive_some())
        welcome = json.dumps({"type": "welcome", "v": 1, "peers": []})
        await stream.send_all(ws.send(TextMessage(welcome)))
        outbound = (await heard.up()).outbound

        await _flood(nursery, link, outbound)
        await stream.send_all(ws.send(CloseConnection(1001, "going away")))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(link_module.LINK_PING_INTERVAL)  # the ping finds it closed
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(heard.events.receive_nowait(), LinkLost)
        assert link.last_error is not None
        assert link.last_error.kind is LinkErrorKind.CLOSED
        assert "going away" in link.last_error.reason
        mock_clock.jump(link_module.LEAVE_TIMEOUT)  # long enough to be done with it either way
        await trio.testing.wait_all_tasks_blocked()
        assert await _closed_by_link(stream)
        assert heard.statuses[1].state == "backoff"
        nursery.cancel_scope.cancel()


async def test_a_broker_that_never_reads_our_hello_is_left_once_the_welcome_is_due(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """The broker upgrades the connection, then reads nothing: a hello bigger than the socket
    buffers (a small one fits, and then waits unread just the same) cannot leave. The wait for
    the welcome bounds its sending too, so the link says why and goes on to its backoff."""
    big = "x" * 64 * 1024 * 1024  # past the largest buffers at both ends (4 + 32 MiB here)

    def big_hello(*args: object, **kwargs: object) -> str:
        return big

    monkeypatch.setattr(link_module, "build_hello", big_hello)
    async with trio.open_nursery() as nursery:
        link, heard, stream, _ = await _link_to_a_broker_by_hand(nursery)
        await trio.testing.wait_all_tasks_blocked()  # the hello fills the socket
        mock_clock.jump(link_module.WELCOME_TIMEOUT)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(link_module.CLOSE_TIMEOUT)  # our Close cannot leave either
        await trio.testing.wait_all_tasks_blocked()
        assert [status.state for status in heard.statuses] == ["connecting", "backoff"]
        assert link.last_error is not None
        assert (link.last_error.kind, link.last_error.reason) == (
            LinkErrorKind.TIMEOUT,
            "the broker sent no welcome in time",
        )
        assert await _closed_by_link(stream)
        nursery.cancel_scope.cancel()


async def test_a_link_comes_up_over_wss(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS, ended in front of a real broker by a server whose certificate the default context
    trusts once SSL_CERT_FILE names the test CA, then the upgrade, the hello and the welcome."""
    monkeypatch.setenv("SSL_CERT_FILE", str(TEST_CA))  # the default context reads it each time
    _, plain = await start_broker(nursery)
    broker_port = urlsplit(plain).port
    assert broker_port is not None
    port = await serve_tls(nursery, forwarding_to(broker_port))
    url = f"wss://127.0.0.1:{port}/v1"
    heard = LinkEventRecorder()
    link = Link("net1", [url], SigningKey.generate(), heard)
    await nursery.start(run_root, link, Node(name="link", kind="link"))
    with trio.fail_after(WAIT):
        up = await heard.up()
    assert (up.url, up.peers, link.state, link.last_error) == (url, [], "up", None)
    nursery.cancel_scope.cancel()
