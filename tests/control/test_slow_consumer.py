"""A connection that stops reading is cut off past the lag limit; nobody else notices."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import Broadcast, Lagged, Subscriber
from meshactors.control import client as client_module
from meshactors.control import event_stream
from meshactors.control import session as session_module
from meshactors.control.session import Push, Session, push_size
from meshactors.daemon.services import Services
from meshactors.ops import system_ops
from meshactors.wire import ipc
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS
from tests.support import LineClient, client_figures, client_id_of


async def test_subscriber_overflow_is_signalled_without_reading() -> None:
    hub = Broadcast[int]()
    sub = hub.subscribe(2, lag_limit=3)
    for item in range(5):
        hub.publish(item)
    assert not sub.overflowed.is_set()  # 2 queued, 3 skipped: at the limit, not past it
    hub.publish(5)
    assert sub.overflowed.is_set()


async def test_a_stalled_event_reader_is_disconnected_and_others_are_served(
    daemon: Services, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system_ops, "LAG_DISCONNECT_LIMIT", 100)
    assert event_stream.LAG_DISCONNECT_LIMIT > 100  # only this connection's limit is lowered
    stalled = await connect()
    assert (await stalled.call("events_subscribe"))["ok"]
    healthy = await connect()
    padding = "x" * 200
    with trio.fail_after(30):
        while "client c1" in daemon.tree.children["control"].children:
            for _ in range(500):
                daemon.events.publish("test_noise", {"padding": padding})
            assert (await healthy.call("status"))["ok"] is True
    with trio.fail_after(30):
        while True:  # the stalled side finds its queued bytes, then the end of the stream
            chunk = await stalled.stream.receive_some(1 << 20)
            if not chunk:
                break
    assert (await healthy.call("status"))["data"]["clients"] == 1


async def test_answers_waiting_for_a_reader_count_as_in_flight(
    daemon: Services, connect: Any
) -> None:
    """A program that pipelines requests and stops reading: answers waiting for room to be
    written count toward the connection's cap, so past it the daemon answers
    `too_many_requests` and stops reading; it never holds an answer per request sent."""
    sent = 3000
    stalled = await connect()
    await stalled.send_raw(b"".join(b'{"id":%d,"op":"version"}\n' % n for n in range(sent)))
    await trio.testing.wait_all_tasks_blocked()  # the daemon did what it could
    client = daemon.tree.children["control"].children["client c1"]
    assert client.figures is not None and client.inbox_statistics is not None
    outgoing = client.inbox_statistics()
    assert outgoing is not None
    assert client.figures()["in_flight"] <= MAX_CONCURRENT_REQUESTS
    # Each answer waiting for room is a request still in flight (+ the reader's refusal).
    assert 0 < outgoing.tasks_waiting_send <= MAX_CONCURRENT_REQUESTS + 1
    answers: dict[str, int] = {}
    with trio.fail_after(30):
        for _ in range(sent):  # reading again, every request gets its answer
            frame = await stalled.frame()
            code = "ok" if frame["ok"] else frame["error"]["code"]
            answers[code] = answers.get(code, 0) + 1
    assert set(answers) == {"ok", "too_many_requests"}


async def test_a_program_not_reading_large_answers_is_cut_off_within_the_byte_cap(
    daemon: Services, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers a program does not read are held up to MAX_OUTGOING_BYTES: past that no new
    request starts, and one whose answer finds no room in time ends the connection."""
    cap = 1024 * 1024
    monkeypatch.setattr(client_module, "MAX_OUTGOING_BYTES", cap)
    monkeypatch.setattr(client_module, "STALL_TIMEOUT", 0.5)
    writer = await connect()
    config = {"id": "n", "brokers": ["ws://127.0.0.1:9/v1"]}
    assert (await writer.call("network_add", config=config))["ok"]
    value = "v" * 16_000
    for n in range(20):  # each state_list answer below is some 320 KB
        assert (await writer.call("state_set", network="n", key=f"k{n:02d}", value=value))["ok"]
    stalled = await connect()
    name = "client " + (await stalled.call("status"))["data"]["client_id"]
    client = daemon.tree.children["control"].children[name]
    assert client.figures is not None
    figures = client.figures
    lines = b'{"id":%d,"op":"state_list","network":"n","limit":500}\n'
    with structlog.testing.capture_logs() as logs, trio.fail_after(30):
        await stalled.send_raw(b"".join(lines % n for n in range(100)))
        while name in daemon.tree.children["control"].children:
            assert (await writer.call("status"))["ok"] is True
    assert cap // 2 < figures()["outgoing_bytes_peak"] <= cap
    cut = [log for log in logs if log["event"] == "client cut off: it stopped reading"]
    assert [log["client"] for log in cut] == [name.removeprefix("client ")]
    with trio.fail_after(30):
        while await stalled.stream.receive_some(1 << 20):
            pass  # what was queued, then the end of the stream


PUSH_CAP, OUTGOING_CAP = 2 * 1024 * 1024, 1024 * 1024  # a stalled subscriber's lowered caps


@attrs.define(eq=False)
class StalledSubscriber:
    """A connection subscribed to channel "c" of network "n" that reads nothing, and a sender
    on "n" (which reaches only this device) that sends it channel messages."""

    sender: LineClient
    stalled: LineClient
    stalled_id: str  # the stalled connection's client id, for its inspect figures
    device_id: str  # this device: the peer `sender` sends to

    async def send(self, payload: str) -> None:
        """Send `payload` on "c" to this device, for `stalled`."""
        params = {"network": "n", "channel": "c", "peer": self.device_id, "payload": payload}
        assert (await self.sender.call("channel_send_to", **params))["ok"]

    async def figures(self) -> dict[str, Any]:
        """The stalled connection's figures, asked over the sender's connection."""
        return await client_figures(self.sender, self.stalled_id)


async def stalled_subscriber(connect: Any, monkeypatch: pytest.MonkeyPatch) -> StalledSubscriber:
    """A stalled subscriber, its connection's push bytes capped at PUSH_CAP and its bytes
    waiting to be written at OUTGOING_CAP."""
    monkeypatch.setattr(client_module, "MAX_PUSH_BYTES", PUSH_CAP)
    monkeypatch.setattr(client_module, "MAX_OUTGOING_BYTES", OUTGOING_CAP)
    sender = await connect()
    config = {"id": "n", "brokers": ["ws://127.0.0.1:9/v1"]}  # only this device is reached
    assert (await sender.call("network_add", config=config))["ok"]
    device_id = (await sender.call("status"))["data"]["device_id"]
    stalled = await connect()
    stalled_id = await client_id_of(stalled)
    assert (await stalled.call("channel_subscribe", network="n", channel="c"))["ok"]
    return StalledSubscriber(sender, stalled, stalled_id, device_id)


@pytest.fixture
async def subscriber(connect: Any, monkeypatch: pytest.MonkeyPatch) -> StalledSubscriber:
    """`stalled_subscriber`, made for the test."""
    return await stalled_subscriber(connect, monkeypatch)


async def test_a_program_not_reading_big_pushes_lags_once_their_bytes_pass_the_cap(
    subscriber: StalledSubscriber,
) -> None:
    """Channel messages a subscriber does not read are held up to MAX_PUSH_BYTES (beyond what
    waits to be written), not up to PUSH_CAPACITY of them: past that they are skipped and the
    subscriber is told so."""
    payload, sent = "x" * 100_000, 300  # 30 MB in all: ten times what may wait for the reader
    assert sent < client_module.PUSH_CAPACITY  # so a bound in events alone would skip none
    for _ in range(sent):  # from here on `stalled` reads nothing
        await subscriber.send(payload)
    await trio.testing.wait_all_tasks_blocked()  # the pump pushed them all
    figures = await subscriber.figures()
    assert 0 < figures["pushes_bytes"] <= PUSH_CAP
    assert figures["lagged"] > 0
    received = 0
    with trio.fail_after(30):
        while (frame := await subscriber.stalled.frame())["kind"] == "channel_inbound":
            received += 1
    assert frame == {"kind": "lagged", "skipped": sent - received}
    slack = 8 * 1024 * 1024  # the socket's buffers, and the batch the forwarder holds
    assert received * len(payload) <= PUSH_CAP + OUTGOING_CAP + slack


async def test_a_lag_notice_sits_between_the_pushes_before_the_hole_and_those_after(
    subscriber: StalledSubscriber,
) -> None:
    """Messages skipped for a program that stopped reading are reported where they were lost:
    those before the `lagged` notice were sent before the hole, those after it after, so the
    program knows which it missed even when later, smaller messages still fit."""

    async def send(number: int, padding: str) -> None:
        await subscriber.send(f"{number:04d}{padding}")

    big, padding = 300, "x" * 100_000  # 30 MB in all: from here on `stalled` reads nothing
    for number in range(big):
        await send(number, padding)
    await trio.testing.wait_all_tasks_blocked()  # the pump pushed them all
    skipped = (await subscriber.figures())["lagged"]
    assert skipped > 0
    # small ones fit in the bytes a skipped big one left; a big one between them does not
    for number, pad in [(big, ""), (big + 1, ""), (big + 2, padding), (big + 3, "")]:
        await send(number, pad)
    await trio.testing.wait_all_tasks_blocked()
    assert (await subscriber.figures())["lagged"] == skipped + 1
    seen: list[int | str] = []
    with trio.fail_after(30):
        while big + 3 not in seen:
            frame = await subscriber.stalled.frame()
            if frame["kind"] == "lagged":
                seen.append(f"lagged {frame['skipped']}")
            else:
                seen.append(int(frame["payload"][:4]))
    got = big - skipped  # the big ones delivered: the first ones, without a hole
    assert seen == [*range(got), f"lagged {skipped}", big, big + 1, "lagged 1", big + 3]


async def test_an_event_the_push_queue_refuses_is_counted_as_skipped_and_never_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[str] = []

    def counting_encode(frame: dict[str, Any]) -> bytes:
        encoded.append(frame["kind"])
        return ipc.encode(frame)

    monkeypatch.setattr(session_module, "encode", counting_encode)
    pushes = Subscriber[Push](2, lag_limit=10, max_bytes=1000, size=push_size)
    unused: Any = None  # push touches only the queue
    session = Session("c1", unused, pushes, unused, unused)
    assert session.push("first", {"payload": "x" * 100})
    assert not session.push("big", {"payload_b64": "A" * 1000})  # past the bytes: at its least
    assert session.push("second", {"payload": "y"})
    assert not session.push("third", {"payload": "z"})  # two queued: full by count
    assert encoded == ["first", "second"]
    assert pushes.skipped_total == 2  # as `offer` counts them: each one's marker says so
    with trio.fail_after(5):
        got = [await pushes.receive() for _ in range(4)]
    first, second = (
        ipc.event_frame("first", {"payload": "x" * 100}),
        ipc.event_frame("second", {"payload": "y"}),
    )
    assert got == [(None, first), Lagged(1), (None, second), Lagged(1)]


async def test_a_program_not_reading_still_learns_its_claim_and_its_served_call_ended(
    connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler whose push queue is full is still told, once it reads again, that another
    program took its method and that a call it serves was cancelled: those are ends it waits
    on, queued in the reserve behind the notice of what was skipped before them."""
    monkeypatch.setattr(client_module, "PUSH_CAPACITY", 16)  # full by count: no event fits
    subscriber = await stalled_subscriber(connect, monkeypatch)
    stalled, sender = subscriber.stalled, subscriber.sender
    for method in ("served", "taken"):
        assert (await stalled.call("rpc_register", network="n", method=method))["ok"]
    to_me = {"network": "n", "peer": subscriber.device_id, "method": "served"}
    call = await sender.send("rpc_call", payload=1, **to_me)
    with trio.fail_after(30):
        inbound = await stalled.frame()
    assert inbound["kind"] == "rpc_inbound"
    for _ in range(300):  # 30 MB of channel messages: from here on `stalled` reads nothing
        await subscriber.send("x" * 100_000)
    await trio.testing.wait_all_tasks_blocked()  # the pump pushed them all
    skipped = (await subscriber.figures())["lagged"]
    assert skipped > 0
    taker = await connect()
    assert (await taker.call("rpc_register", network="n", method="taken"))["ok"]
    assert (await sender.call("rpc_cancel", call=call))["ok"]
    await trio.testing.wait_all_tasks_blocked()
    assert (await subscriber.figures())["lagged"] == skipped  # neither was skipped
    with trio.fail_after(30):
        while (frame := await stalled.frame())["kind"] == "channel_inbound":
            pass
        ends = [frame, await stalled.frame(), await stalled.frame()]
    assert ends == [
        {"kind": "lagged", "skipped": skipped},
        {
            "kind": "handler_displaced",
            "network": "n",
            "method": "taken",
            "by": await client_id_of(taker),
        },
        {
            "kind": "rpc_cancelled",
            "network": "n",
            "request_id": inbound["request_id"],
            "reason": "cancelled",
        },
    ]


async def test_a_program_not_reading_still_learns_its_channel_ended_with_its_network(
    subscriber: StalledSubscriber,
) -> None:
    """A subscriber whose push queue is full is still told, once it reads again, that its
    network was removed and its subscription with it: an end it waits on, queued in the
    reserve behind the notice of what was skipped, and nothing of the channel after it."""
    for _ in range(300):  # 30 MB of channel messages: from here on `stalled` reads nothing
        await subscriber.send("x" * 100_000)
    await trio.testing.wait_all_tasks_blocked()  # the pump pushed them all
    skipped = (await subscriber.figures())["lagged"]
    assert skipped > 0
    assert (await subscriber.sender.call("network_remove", network="n"))["ok"]
    assert (await subscriber.figures())["lagged"] == skipped  # the end was not skipped
    with trio.fail_after(30):
        while (frame := await subscriber.stalled.frame())["kind"] == "channel_inbound":
            pass
        ends = [frame, await subscriber.stalled.frame()]
    assert ends == [
        {"kind": "lagged", "skipped": skipped},
        {
            "kind": "channel_unsubscribed",
            "network": "n",
            "channel": "c",
            "reason": "network_removed",
        },
    ]


async def test_nothing_of_a_channel_follows_its_unsubscribe_answer(
    subscriber: StalledSubscriber,
) -> None:
    """A subscriber that leaves a channel while messages of it wait for it (it read nothing,
    and another connection keeps the channel's pump going) gets none of them after the
    answer: those not yet written are dropped. Subscribing again, it gets the new ones."""
    stalled, sender = subscriber.stalled, subscriber.sender
    assert (await sender.call("channel_subscribe", network="n", channel="c"))["ok"]
    for _ in range(1000):  # from here on `stalled` reads nothing
        await subscriber.send("x" * 1000)
        await trio.testing.wait_all_tasks_blocked()  # pushed, and forwarded as a frame of its own
    figures = await subscriber.figures()
    assert figures["outgoing"] == client_module.OUTGOING_CAPACITY  # full of frames, not bytes
    assert figures["pushes_queued"] > 0  # so these wait behind them
    left = await stalled.send("channel_unsubscribe", network="n", channel="c")
    await trio.testing.wait_all_tasks_blocked()  # answered: the answer waits to be written
    with trio.fail_after(30):
        while (frame := await stalled.frame()).get("id") != left:
            pass
        assert frame == {"id": left, "ok": True, "data": {"unsubscribed": True}}
        after = await stalled.send("version")
        kinds = []
        while (frame := await stalled.frame()).get("id") != after:
            kinds.append(frame["kind"])
    assert "channel_inbound" not in kinds
    assert (await subscriber.figures())["unsubscribed_dropped"] > 0
    assert (await stalled.call("channel_subscribe", network="n", channel="c"))["ok"]
    await subscriber.send("again")
    with trio.fail_after(30):
        while (frame := await stalled.frame()).get("kind") != "channel_inbound":
            pass
    assert frame["payload"] == "again"
