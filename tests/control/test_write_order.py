"""Answers and events, queued behind a blocked write, reach the client whole and each once: a
connection that stops reading and then resumes loses nothing and gets no cut frame. A run of
channel messages goes out in a few writes (the connection's `writes` figure), not one each."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from meshactors.daemon.services import Services
from tests.support import LineClient

SENDS = 60  # own-device channel sends of PAYLOAD_CHARS each: more than the socket buffers hold
PAYLOAD_CHARS = 32 * 1024
WAIT = 20.0  # seconds to read everything back
RUN = 40  # channel notifications sent in one write, run as one


async def subscribed_client(daemon: Services) -> LineClient:
    """A connection subscribed to channel `c` of network `n` (own-device sends need no broker)."""
    client = LineClient(await trio.open_unix_socket(str(daemon.paths.socket)))
    with trio.fail_after(WAIT):
        config = {"id": "n", "brokers": ["ws://127.0.0.1:9/v1"]}
        assert (await client.call("network_add", config=config))["ok"]
        assert (await client.call("channel_subscribe", network="n", channel="c"))["ok"]
    return client


def send_to_self(daemon: Services, payload: Any) -> dict[str, Any]:
    """A `channel_send_to` of `payload` to channel `c` on this device (no id: a notification)."""
    me = daemon.identity.device_id
    return {"op": "channel_send_to", "network": "n", "channel": "c", "peer": me, "payload": payload}


async def send_lines(client: LineClient, requests: list[dict[str, Any]]) -> None:
    """Write every request as its line, in one write."""
    await client.send_raw(b"".join(json.dumps(request).encode() + b"\n" for request in requests))


async def read_frames(client: LineClient, count: int) -> list[dict[str, Any]]:
    """The next `count` frames the connection gets."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(WAIT):
        while len(frames) < count:
            frames.append(await client.frame())
    return frames


async def test_a_reader_that_stalls_then_resumes_gets_every_frame_whole(
    daemon: Services,
) -> None:
    client = await subscribed_client(daemon)
    sends = [
        {"id": n, **send_to_self(daemon, f"{n:04d}" + "x" * PAYLOAD_CHARS)} for n in range(SENDS)
    ]
    await send_lines(client, sends)
    await trio.testing.wait_all_tasks_blocked()  # the daemon's writes fill the socket, then wait
    frames = await read_frames(client, 2 * SENDS)
    answers = [frame for frame in frames if "ok" in frame]
    events = [frame for frame in frames if frame.get("kind") == "channel_inbound"]
    assert sorted(answer["id"] for answer in answers) == list(range(SENDS))
    assert all(answer["ok"] for answer in answers)
    assert [event["payload"][:4] for event in events] == [f"{n:04d}" for n in range(SENDS)]
    assert all(len(event["payload"]) == PAYLOAD_CHARS + 4 for event in events)
    await client.aclose()


async def test_channel_sends_sent_as_notifications_run_in_order_unanswered(
    daemon: Services,
) -> None:
    client = await subscribed_client(daemon)
    sends = [send_to_self(daemon, n) for n in range(4)]
    sends[0]["id"], sends[2]["id"] = "a", "c"  # 1 and 3 are notifications
    await send_lines(client, sends)
    frames = await read_frames(client, 6)
    assert [frame["id"] for frame in frames if "ok" in frame] == ["a", "c"]
    events = [frame["payload"] for frame in frames if frame.get("kind") == "channel_inbound"]
    assert events == [0, 1, 2, 3]
    status = await client.call("status")  # the next frame: no answer was left queued
    assert "client_id" in status["data"]
    await client.aclose()


async def writes_so_far(client: LineClient) -> int:
    """The `writes` figure of this connection's `client` actor, as `inspect` shows it."""
    status = await client.call("status")
    tree = (await client.call("inspect"))["data"]
    name = "client " + status["data"]["client_id"]
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if node["name"] == name:
            return int(node["figures"]["writes"])
        nodes.extend(node.get("children", []))
    raise AssertionError(f"{name} is not in the tree")


async def test_a_run_of_channel_messages_reaches_a_subscriber_in_a_few_writes(
    daemon: Services,
) -> None:
    client = await subscribed_client(daemon)
    before = await writes_so_far(client)  # its answer is written after the figure was read
    await send_lines(client, [send_to_self(daemon, n) for n in range(RUN)])
    frames = await read_frames(client, RUN)
    assert [frame["payload"] for frame in frames] == list(range(RUN))
    writes = await writes_so_far(client) - before
    assert writes < RUN // 2  # the run shared writes (one each would be RUN)
    await client.aclose()
