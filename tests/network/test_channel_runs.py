"""Channel sends pipelined on one connection: runs of them go as one `chan_run` frame, each
request is answered in order with its own id (errors per request), each message reaches the
subscribers as its own event, in order, and a stalled subscriber lags per event."""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.network import peers
from meshactors.network.app_frames import Chan, ChanRun
from meshactors.network.channels import _group_frames
from meshactors.network.payload import MAX_PAYLOAD_BYTES, Payload
from meshactors.wire.peer import MAX_PEER_FRAME_BYTES
from tests.network.appclient import AppClient, network_children
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair, solo_daemon


@attrs.define(eq=False)
class Pipeline:
    """A raw connection that writes many requests at once and reads answers in arrival order."""

    stream: trio.SocketStream
    buffer: bytes = b""

    @classmethod
    async def open(cls, daemon: Daemon) -> Pipeline:
        return cls(await trio.open_unix_socket(str(daemon.services.paths.socket)))

    async def send(self, requests: list[dict[str, Any]]) -> None:
        """Write every request (ids 1, 2, …) in one write, so that the daemon reads them at once."""
        lines = [json.dumps({"id": n, **request}) + "\n" for n, request in enumerate(requests, 1)]
        await self.stream.send_all("".join(lines).encode())

    async def answers(self, count: int) -> list[dict[str, Any]]:
        """The next `count` frames, in the order they arrived."""
        with trio.fail_after(WAIT):
            while self.buffer.count(b"\n") < count:
                self.buffer += await self.stream.receive_some(1 << 16)
        *lines, self.buffer = self.buffer.split(b"\n", count)
        return [json.loads(line) for line in lines]


def _send_to(peer: str, **message: Any) -> dict[str, Any]:
    return {"op": "channel_send_to", "network": NET, "channel": "run", "peer": peer, **message}


async def _frames_received(receiver: Daemon, nursery: trio.Nursery) -> int:
    """Channel frames `receiver` has taken in so far (a run, a batch or a single message each)."""
    inspector = await AppClient.open(receiver.services.paths.socket, nursery)
    channels = network_children(await inspector.call("inspect"), NET)["core"]["figures"]["channels"]
    await inspector.aclose()
    return int(channels["counters"].get("frames_received", 0))


async def _pair_reading_run(mesh: Mesh, nursery: trio.Nursery) -> tuple[Daemon, Daemon, AppClient]:
    """An active pair and a client on b subscribed to channel `run`."""
    a, b = await active_pair(mesh)
    reader = await AppClient.open(b.services.paths.socket, nursery)
    await reader.call("channel_subscribe", network=NET, channel="run")
    return a, b, reader


async def test_pipelined_sends_go_as_one_frame_and_arrive_as_events_in_order(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b, reader = await _pair_reading_run(mesh, nursery)
    sender = await Pipeline.open(a)
    frames = await _frames_received(b, nursery)
    await sender.send([_send_to(b.device_id, payload={"n": n}) for n in range(20)])
    answers = await sender.answers(20)
    assert [answer["id"] for answer in answers] == list(range(1, 21))
    assert all(answer["data"] == {"dispatched_to": [b.device_id]} for answer in answers)
    received = await reader.count("channel_inbound", 20)
    assert [event["payload"] for event in received] == [{"n": n} for n in range(20)]
    assert received[0] == {
        "kind": "channel_inbound",
        "network": NET,
        "from": a.device_id,
        "channel": "run",
        "payload": {"n": 0},
    }
    assert await _frames_received(b, nursery) == frames + 1  # one chan_run frame for the twenty


async def test_pipelined_batches_run_together_yet_arrive_one_event_each_in_order(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b, reader = await _pair_reading_run(mesh, nursery)
    sender = await Pipeline.open(a)
    requests = [
        _send_to(b.device_id, payloads=[1, 2, 3]),
        _send_to(b.device_id, payloads=[4, 5]),
        _send_to(b.device_id, payload=6),  # a one-message send ends the run of batches
        _send_to(b.device_id, payloads=[7]),
        _send_to(b.device_id, payloads=["x" * MAX_PAYLOAD_BYTES]),  # too large: answered alone
        _send_to(b.device_id, payloads=[8, 9]),
    ]
    await sender.send(requests)
    answers = await sender.answers(len(requests))
    codes = [None if answer["ok"] else answer["error"]["code"] for answer in answers]
    assert codes == [None, None, None, None, "payload_too_large", None]
    received = await reader.count("channel_inbound", 5)
    assert [event.get("payloads", event.get("payload")) for event in received] == [
        [1, 2, 3],
        [4, 5],
        6,
        7,  # a batch of one arrives as one message
        [8, 9],
    ]


async def test_errors_inside_a_run_are_answered_alone_in_their_place(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    daemon = await solo_daemon(mesh)
    me = daemon.device_id
    reader = await AppClient.open(daemon.services.paths.socket, nursery)
    await reader.call("channel_subscribe", network=NET, channel="run")
    blob = base64.b64encode(b"\x00\xff").decode()
    requests = [
        _send_to(me, payload="a"),
        _send_to(me, payload="b"),
        _send_to(me, payload="x" * MAX_PAYLOAD_BYTES),  # payload_too_large
        _send_to(me, payload="c"),
        _send_to(me, payload="c", channel=""),  # invalid_params: no channel name
        _send_to(me, payload_b64="not base64!"),  # invalid_params
        _send_to(me, payload_b64=blob),  # binary: a run of its own
        _send_to(me, payload="d", colour="red"),  # invalid_params: unknown key
        _send_to(me, payload="d"),
        _send_to("nobody", payload="lost"),  # a run that fails as a whole
        _send_to("nobody", payload="lost"),
        _send_to(me, payload="e"),
    ]
    sender = await Pipeline.open(daemon)
    await sender.send(requests)
    answers = await sender.answers(len(requests))
    assert [answer["id"] for answer in answers] == list(range(1, len(requests) + 1))
    codes = [None if answer["ok"] else answer["error"]["code"] for answer in answers]
    assert codes == [
        None,
        None,
        "payload_too_large",
        None,
        "invalid_params",
        "invalid_params",
        None,
        "invalid_params",
        None,
        "no_such_peer",
        "no_such_peer",
        None,
    ]
    received = await reader.count("channel_inbound", 6)
    shown = [event.get("payload", event.get("payload_b64")) for event in received]
    assert shown == ["a", "b", "c", blob, "d", "e"]
    assert "payload_b64" in received[3] and "payload" not in received[3]


async def test_a_peer_without_the_feature_gets_one_chan_frame_per_message(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both daemons announce what a build before chan_run did, in every hello they send (a
    # hello edited after the handshake could be replaced by a late one).
    older = tuple(feature for feature in peers.FEATURES if feature != "chan_run")
    monkeypatch.setattr(peers, "FEATURES", older)
    a, b = await active_pair(mesh)
    hello = a.network().peers._peers[b.device_id].hello
    assert hello is not None and "chan_run" not in hello.features
    reader = await AppClient.open(b.services.paths.socket, nursery)
    await reader.call("channel_subscribe", network=NET, channel="run")
    sender = await Pipeline.open(a)
    frames = await _frames_received(b, nursery)
    await sender.send([_send_to(b.device_id, payload=n, retain=True) for n in range(5)])
    assert all(answer["ok"] for answer in await sender.answers(5))
    received = await reader.count("channel_inbound", 5)
    assert [event["payload"] for event in received] == list(range(5))
    assert await _frames_received(b, nursery) == frames + 5
    late = await AppClient.open(b.services.paths.socket, nursery)
    assert (await late.call("channel_subscribe", network=NET, channel="run"))["retained"] == 1
    assert (await late.event("channel_inbound"))["payload"] == 4


async def test_a_stalled_subscriber_lags_per_event_when_events_come_in_runs(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    daemon = await solo_daemon(mesh)
    me = daemon.device_id
    stalled = await AppClient.open(daemon.services.paths.socket, nursery, read=False)
    await stalled.send("channel_subscribe", network=NET, channel="flood")
    inspector = await AppClient.open(daemon.services.paths.socket, nursery)
    with trio.fail_after(WAIT):
        while "channel flood" not in network_children(await inspector.call("inspect"), NET):
            pass  # each pass asks the daemon again
    channels, run, total = daemon.network().channels, 64, 40_000
    for start in range(0, total, run):
        payloads = [Payload(n) for n in range(start, start + run)]
        await channels.send_to(me, "flood", [payloads], retain=False, separate=True)
    await trio.testing.wait_all_tasks_blocked()
    got: list[int] = []
    skipped = 0
    buffer = b""
    with trio.fail_after(WAIT):
        while not skipped:
            buffer += await stalled.stream.receive_some(1 << 20)
            *lines, buffer = buffer.split(b"\n")
            for frame in map(json.loads, lines):
                if frame.get("kind") == "channel_inbound":
                    got.append(frame["payload"])
                elif frame.get("kind") == "lagged":
                    skipped = frame["skipped"]
    assert got == list(range(len(got)))  # the oldest arrive, in order; the newest are skipped
    assert skipped == total - len(got) > 0  # counted per event, not per run
    pump = network_children(await inspector.call("inspect"), NET)["channel flood"]["figures"]
    assert (pump["delivered"], pump["lagged"]) == (len(got), skipped)


async def test_a_run_too_large_for_one_frame_arrives_whole_in_several(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b, reader = await _pair_reading_run(mesh, nursery)
    frames = await _frames_received(b, nursery)
    big = "y" * (MAX_PEER_FRAME_BYTES // 8)
    run = [Payload([n, big]) for n in range(40)]  # ~5 frames' worth
    await a.network().channels.send_to(b.device_id, "run", [run], retain=False, separate=True)
    received = await reader.count("channel_inbound", 40)
    assert [event["payload"] for event in received] == [[n, big] for n in range(40)]
    assert await _frames_received(b, nursery) == frames + 8  # halved thrice: 40, 20, 10, 5 each


def test_one_payload_is_a_chan_frame_and_several_a_run() -> None:
    small = [Payload(n) for n in range(3)]
    assert _group_frames("run", small, retain=True, separate=True) == [
        ChanRun("run", [0, 1, 2], binary=False, retain=True)
    ]
    assert _group_frames("run", small[:1], retain=False, separate=True) == [Chan("run", 0)]
