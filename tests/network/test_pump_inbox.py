"""A channel pump's full inbox: its subscribers are told what it dropped, and where."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshactors.network import channels as channels_module
from meshactors.network.channels import ChannelPump
from tests.network.appclient import AppClient, network_children
from tests.network.conftest import NET, WAIT, Daemon, Mesh, active_pair

PUMP_ROOM = 4  # a pump's inbox here: its subscriber's join, then three frames' lines
SENT = 8  # messages sent while the pump is held: PUMP_ROOM - 1 fit, the rest are dropped


@pytest.fixture
def held_pumps(monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """Pumps with an inbox of PUMP_ROOM that read nothing until the returned event is set."""
    monkeypatch.setattr(channels_module, "PUMP_INBOX", PUMP_ROOM)
    release, run = trio.Event(), ChannelPump.run

    async def held(pump: ChannelPump, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await release.wait()
        await run(pump)

    monkeypatch.setattr(ChannelPump, "run", held)
    return release


async def channel_counters(daemon: Daemon) -> dict[str, int]:
    """The counters of `daemon`'s channels in NET, as `inspect` shows them."""
    core = network_children(await daemon.call("inspect"), NET)["core"]["figures"]
    counters: dict[str, int] = core["channels"]["counters"]
    return counters


async def until_received(daemon: Daemon, count: int) -> dict[str, int]:
    """`daemon`'s channel counters once its core took in `count` messages (each pass asks the
    daemon again)."""
    with trio.fail_after(WAIT):
        while (counters := await channel_counters(daemon)).get("received", 0) < count:
            pass
    return counters


def as_read(reader: AppClient) -> list[Any]:
    """The channel events `reader` got, in order: each message's payload, each lag notice."""
    return [
        event if event["kind"] == "lagged" else event["payload"]
        for event in reader.events
        if event["kind"] in ("channel_inbound", "lagged")
    ]


async def test_a_subscriber_is_told_where_a_full_pump_dropped_messages(
    mesh: Mesh, nursery: trio.Nursery, held_pumps: trio.Event
) -> None:
    a, b = await active_pair(mesh)
    reader = await AppClient.open(b.services.paths.socket, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    sender = await AppClient.open(a.services.paths.socket, nursery)
    for n in range(SENT):
        await sender.call(
            "channel_send_to", network=NET, channel="news", peer=b.device_id, payload=n
        )
    dropped = SENT - (PUMP_ROOM - 1)
    assert (await until_received(b, SENT))["pump_full"] == dropped
    held_pumps.set()
    await sender.call(
        "channel_send_to", network=NET, channel="news", peer=b.device_id, payload="after"
    )
    await reader.count("channel_inbound", PUMP_ROOM)
    lagged = {"kind": "lagged", "network": NET, "channel": "news", "skipped": dropped}
    assert as_read(reader) == [0, 1, 2, lagged, "after"]
    pump = network_children(await reader.call("inspect"), NET)["channel news"]["figures"]
    assert (pump["inbox_dropped"], pump["delivered"]) == (dropped, PUMP_ROOM)


async def test_a_reliable_message_a_full_pump_dropped_comes_again_untold(
    mesh: Mesh, nursery: trio.Nursery, held_pumps: trio.Event
) -> None:
    """A reliable message the pump had no room for is not acknowledged: its sender sends it
    again, so the subscribers get it later and hear of no loss."""
    a, b = await active_pair(mesh)
    reader = await AppClient.open(b.services.paths.socket, nursery)
    await reader.call("channel_subscribe", network=NET, channel="orders")
    sender = await AppClient.open(a.services.paths.socket, nursery)
    for n in range(PUMP_ROOM - 1):
        await sender.call(
            "channel_send_to", network=NET, channel="orders", peer=b.device_id, payload=n
        )
    reliable = await sender.send(
        "channel_send_reliable",
        network=NET,
        channel="orders",
        peer=b.device_id,
        payload="buy",
        ttl_ms=int(WAIT * 1000),
    )
    assert (await until_received(b, PUMP_ROOM))["pump_full"] == 1
    held_pumps.set()
    assert await sender.answer(reliable) == {"acknowledged": True, "subscribers": 1}
    await reader.count("channel_inbound", PUMP_ROOM)
    assert as_read(reader) == [0, 1, 2, "buy"]
