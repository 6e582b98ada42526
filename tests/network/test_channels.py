"""Channels: subscribe, send to one, to all, reliably; retained values; slow readers; cleanup."""

from __future__ import annotations

import base64
import contextlib
import functools
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import ActorGone, Supervisor
from meshactors.client import ChannelMessage, MeshClient
from meshactors.network.app_frames import Chan
from meshactors.network.channels import ChannelPump
from meshactors.network.core import COMMAND_TIMEOUT
from meshactors.network.payload import MAX_BATCH, MAX_PAYLOAD_BYTES, Payload
from meshactors.network.retained import RETAINED_MAX_VALUES
from tests.network.appclient import AppClient, network_children
from tests.network.conftest import (
    NET,
    WAIT,
    Daemon,
    Mesh,
    OpFailed,
    active_pair,
    approve_both,
    solo_daemon,
)
from tests.network.rawpeer import approved_raw_peer
from tests.network.test_binary_streams import HeldCore


async def joined(mesh: Mesh, *names: str) -> list[Daemon]:
    daemons = [await mesh.daemon(name) for name in names]
    for daemon in daemons:
        await daemon.join(mesh.url)
    return daemons


async def client_of(daemon: Daemon, nursery: trio.Nursery, *, read: bool = True) -> AppClient:
    return await AppClient.open(daemon.services.paths.socket, nursery, read=read)


async def test_a_message_reaches_the_subscriber_with_its_sender(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await active_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    subscribed = await reader.call("channel_subscribe", network=NET, channel="news")
    assert subscribed == {"network": NET, "channel": "news", "retained": 0}
    sent = await sender.call(
        "channel_send_to", network=NET, channel="news", peer=b.device_id, payload={"n": 1}
    )
    assert sent == {"dispatched_to": [b.device_id]}
    message = await reader.event("channel_inbound")
    assert message == {
        "kind": "channel_inbound",
        "network": NET,
        "from": a.device_id,
        "channel": "news",
        "payload": {"n": 1},
    }
    blob = base64.b64encode(b"\x00\xff").decode()
    await sender.call(
        "channel_send_to", network=NET, channel="news", peer=b.device_id, payload_b64=blob
    )
    assert (await reader.event("channel_inbound"))["payload_b64"] == blob


async def test_send_all_fans_out_to_three_peers(mesh: Mesh, nursery: trio.Nursery) -> None:
    a, *others = await joined(mesh, "a", "b", "c", "d")
    for other in others:
        await approve_both(a, other)
    readers = [await client_of(other, nursery) for other in others]
    for reader in readers:
        await reader.call("channel_subscribe", network=NET, channel="all")
    sender = await client_of(a, nursery)
    sent = await sender.call("channel_send_all", network=NET, channel="all", payload="hi")
    assert sorted(sent["dispatched_to"]) == sorted(o.device_id for o in others)
    for reader in readers:
        message = await reader.event("channel_inbound", channel="all")
        assert (message["from"], message["payload"]) == (a.device_id, "hi")


async def test_a_late_subscriber_gets_the_retained_value_at_once(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await active_pair(mesh)
    sender, syncer = await client_of(a, nursery), await client_of(b, nursery)
    await syncer.call("channel_subscribe", network=NET, channel="sync")
    for value in ("old", "latest"):
        await sender.call(
            "channel_send_all", network=NET, channel="presence", payload=value, retain=True
        )
    await sender.call("channel_send_all", network=NET, channel="presence", payload="not kept")
    await sender.call("channel_send_all", network=NET, channel="sync", payload="barrier")
    await syncer.event("channel_inbound", channel="sync")  # a's frames arrive in order
    late = await client_of(b, nursery)
    subscribed = await late.call("channel_subscribe", network=NET, channel="presence")
    assert subscribed["retained"] == 1
    message = await late.event("channel_inbound")
    assert (message["payload"], message["retained"]) == ("latest", True)


async def test_one_peer_flooding_retained_values_leaves_anothers_in_place(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b, flooder = await approved_raw_peer(mesh, nursery)
    (a,) = await joined(mesh, "a")
    await approve_both(a, b)
    reader = await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    await a.call("channel_send_all", network=NET, channel="news", payload="kept", retain=True)
    await reader.event("channel_inbound", payload="kept")
    for n in range(RETAINED_MAX_VALUES):
        await flooder.send_frame(b.device_id, Chan(f"flood{n}", n, retain=True))
    await flooder.send_frame(b.device_id, Chan("news", "flooded"))  # read after the flood
    await reader.event("channel_inbound", payload="flooded")
    late = await client_of(b, nursery)
    assert (await late.call("channel_subscribe", network=NET, channel="news"))["retained"] == 1
    kept = await late.event("channel_inbound")
    assert (kept["from"], kept["payload"], kept["retained"]) == (a.device_id, "kept", True)


async def test_a_peer_that_becomes_active_later_gets_retained_values(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, _ = await active_pair(mesh)
    sender = await client_of(a, nursery)
    await sender.call(
        "channel_send_all", network=NET, channel="presence", payload="here", retain=True
    )
    late_peer = (await joined(mesh, "late"))[0]
    reader = await client_of(late_peer, nursery)
    await reader.call("channel_subscribe", network=NET, channel="presence")
    await approve_both(a, late_peer)
    message = await reader.event("channel_inbound")
    assert (message["from"], message["payload"]) == (a.device_id, "here")


async def test_a_retained_send_that_failed_is_never_delivered_later(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, late = await joined(mesh, "a", "late")
    await a.wait_status(late, "pending")
    reader = await client_of(late, nursery)
    await reader.call("channel_subscribe", network=NET, channel="presence")
    sender = await client_of(a, nursery)
    with pytest.raises(OpFailed) as failed:
        await sender.call(
            "channel_send_to",
            network=NET,
            channel="presence",
            peer=late.device_id,
            payload="lost",
            retain=True,
        )
    assert failed.value.code == "peer_not_active"
    await sender.call(
        "channel_send_all", network=NET, channel="presence", payload="kept", retain=True
    )
    assert a.network().channels.figures()["retained_own"] == 1
    await approve_both(a, late)
    # Retained values go to a newly active peer oldest first: "lost" would come before "kept".
    message = await reader.event("channel_inbound")
    assert (message["from"], message["payload"]) == (a.device_id, "kept")


async def test_a_reliable_send_answers_once_acknowledged_and_counts_as_sent(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await active_pair(mesh)
    reader = await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="orders")
    sender = await client_of(a, nursery)
    answer = await sender.call(
        "channel_send_reliable",
        network=NET,
        channel="orders",
        peer=b.device_id,
        payload="buy",
        ttl_ms=5000,
    )
    assert answer == {"acknowledged": True, "subscribers": 1}
    assert (await reader.event("channel_inbound"))["payload"] == "buy"
    core = network_children(await sender.call("inspect"), NET)["core"]["figures"]
    assert core["channels"]["counters"]["sent"] == 1  # a reliable send counts, once
    with pytest.raises(OpFailed) as failure:
        await sender.call(
            "channel_send_reliable",
            network=NET,
            channel="orders",
            peer=b.device_id,
            payload="x",
            ttl_ms=0,
        )
    assert failure.value.code == "invalid_params"


async def test_pumps_come_with_the_first_subscriber_and_go_with_the_last(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    (a,) = await joined(mesh, "a")
    one, two = await client_of(a, nursery), await client_of(a, nursery)
    await one.call("channel_subscribe", network=NET, channel="x")
    await two.call("channel_subscribe", network=NET, channel="x")
    children = network_children(await one.call("inspect"), NET)
    assert children["channel x"]["kind"] == "channel"
    assert len(children["channel x"]["figures"]["subscribers"]) == 2
    assert await one.call("channel_unsubscribe", network=NET, channel="x") == {"unsubscribed": True}
    assert "channel x" in network_children(await one.call("inspect"), NET)
    await two.aclose()
    with trio.fail_after(5):
        while "channel x" in network_children(await one.call("inspect"), NET):
            pass  # each pass asks the daemon again
    assert await one.call("channel_unsubscribe", network=NET, channel="x") == {
        "unsubscribed": False
    }


async def test_a_stalled_reader_does_not_slow_another_subscriber(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    daemon = await solo_daemon(mesh)
    stalled = await client_of(daemon, nursery, read=False)
    await stalled.send("channel_subscribe", network=NET, channel="flood")
    reader, sender = await client_of(daemon, nursery), await client_of(daemon, nursery)
    await reader.call("channel_subscribe", network=NET, channel="flood")
    count = 12_000
    channels = daemon.network().channels
    for n in range(count):
        await channels.send_to(daemon.device_id, "flood", [[_payload(n)]], retain=False)
        if n % 256 == 255:  # own-device sends never wait: let the pump and reader catch up
            await trio.testing.wait_all_tasks_blocked()
    received = await reader.count("channel_inbound", count, timeout=30)
    assert [m["payload"] for m in received] == list(range(count))
    pump = network_children(await sender.call("inspect"), NET)["channel flood"]
    assert pump["figures"]["lagged"] > 0
    assert pump["figures"]["delivered"] >= count


async def test_own_device_calls_and_channels_work_without_a_broker(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    daemon = await solo_daemon(mesh)
    me = daemon.device_id
    server, caller = await client_of(daemon, nursery), await client_of(daemon, nursery)
    await server.call("rpc_register", network=NET, method="echo")
    call_id = await caller.send("rpc_call", network=NET, peer=me, method="echo", payload=7)
    inbound = await server.event("rpc_inbound")
    assert inbound["from"] == me
    await server.call("rpc_respond", request_id=inbound["request_id"], payload=inbound["payload"])
    assert await caller.answer(call_id) == {"payload": 7}
    await server.call("channel_subscribe", network=NET, channel="local")
    await caller.call("channel_send_to", network=NET, channel="local", peer=me, payload="hey")
    assert (await server.event("channel_inbound"))["from"] == me
    acked = await caller.call(
        "channel_send_reliable", network=NET, channel="local", peer=me, payload=1, ttl_ms=2000
    )
    assert acked == {"acknowledged": True, "subscribers": 1}
    sent = await caller.call("channel_send_all", network=NET, channel="local", payload=1)
    assert sent == {"dispatched_to": []}


def _payload(value: object = None) -> Payload:
    return Payload(value)


async def test_a_batch_of_payloads_arrives_as_one_event_in_order(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await active_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="bulk")
    batch = [{"n": n} for n in range(500)]
    sent = await sender.call(
        "channel_send_to",
        network=NET,
        channel="bulk",
        peer=b.device_id,
        payloads=batch,
        retain=True,
    )
    assert sent == {"dispatched_to": [b.device_id]}
    (received,) = await reader.count("channel_inbound", 1)
    assert received["payloads"] == batch and "payload" not in received
    assert received["from"] == a.device_id
    late = await client_of(b, nursery)
    assert (await late.call("channel_subscribe", network=NET, channel="bulk"))["retained"] == 1
    assert (await late.event("channel_inbound"))["payload"] == {"n": 499}


@pytest.mark.parametrize(
    "params",
    [
        {"payloads": []},
        {"payloads": list(range(MAX_BATCH + 1))},
        {"payloads": [1], "payload": 1},
        {"payloads": ["x" * MAX_PAYLOAD_BYTES]},
    ],
    ids=["empty", "too_many", "both", "too_large"],
)
async def test_bad_batches_are_refused(
    mesh: Mesh, nursery: trio.Nursery, params: dict[str, object]
) -> None:
    (a,) = await joined(mesh, "a")
    sender = await client_of(a, nursery)
    with pytest.raises(OpFailed) as failure:
        await sender.call("channel_send_all", network=NET, channel="bulk", **params)
    assert failure.value.code in ("invalid_params", "payload_too_large")


async def test_the_client_library_unpacks_a_batch_into_messages(mesh: Mesh) -> None:
    daemon = await solo_daemon(mesh)
    me = daemon.device_id
    async with MeshClient(daemon.services.paths.socket) as client:
        subscription = client.subscribe(NET, "bulk")
        async with subscription as messages:
            await client.channel_send_many(NET, "bulk", [1, 2, 3], peer=me)
            with trio.fail_after(WAIT):
                got = [await messages.__anext__() for _ in range(3)]
    assert got == [ChannelMessage(NET, me, "bulk", n) for n in (1, 2, 3)]


async def test_removing_the_network_tells_each_subscriber_its_channels_ended(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    _, b = await active_pair(mesh)
    reader, other = await client_of(b, nursery), await client_of(b, nursery)
    for channel in ("news", "weather"):
        await reader.call("channel_subscribe", network=NET, channel=channel)
    await other.call("channel_subscribe", network=NET, channel="news")
    await b.call("network_remove", network=NET)
    told = {
        (client, channel): await client.event("channel_unsubscribed", channel=channel)
        for client, channel in ((reader, "news"), (reader, "weather"), (other, "news"))
    }
    for event in told.values():
        assert (event["network"], event["reason"]) == (NET, "network_removed")
    with pytest.raises(OpFailed) as failure:
        await reader.call("channel_subscribe", network=NET, channel="news")
    assert failure.value.code == "no_such_network"


async def test_a_pump_slow_to_stop_does_not_hold_up_the_end_of_its_channel(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscribers of a removed network are told before any pump is stopped: a stop that
    takes long (or a leave core does not finish) does not leave them waiting untold."""
    _, b = await active_pair(mesh)
    reader = await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    told = trio.Event()
    stop_child = Supervisor.stop_child

    async def slow_stop(supervisor: Supervisor, name: str, **kwargs: Any) -> bool:
        if name.startswith("channel "):
            await told.wait()  # a pump's stop takes until its subscribers were told
        return await stop_child(supervisor, name, **kwargs)

    monkeypatch.setattr(Supervisor, "stop_child", slow_stop)
    async with trio.open_nursery() as removing:
        removing.start_soon(functools.partial(b.call, "network_remove", network=NET))
        with trio.fail_after(WAIT):
            event = await reader.event("channel_unsubscribed", channel="news")
        told.set()
    assert (event["network"], event["reason"]) == (NET, "network_removed")


async def test_subscribers_a_removed_networks_core_never_told_are_told_after_its_stop(
    mesh: Mesh, nursery: trio.Nursery, real_time_clock: trio.testing.MockClock
) -> None:
    """Core is held past COMMAND_TIMEOUT, so the removal's leave times out before core takes
    it up, and the network is stopped with its subscribers untold: they are told once it
    stopped, when nothing of the channel can follow."""
    _, b = await active_pair(mesh)
    reader = await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    held = HeldCore(b.network(), patience=COMMAND_TIMEOUT + WAIT)
    removed = trio.Event()

    async def hold() -> None:
        with contextlib.suppress(ActorGone):  # the network's stop ends the hold
            await held.run()

    async def remove() -> None:
        await b.call("network_remove", network=NET)
        removed.set()

    nursery.start_soon(hold)
    with trio.fail_after(WAIT):
        await held.running.wait()
        nursery.start_soon(remove)
        await held.queued(1)  # the leave waits for core
    real_time_clock.jump(COMMAND_TIMEOUT)  # the leave's ask times out
    event = await reader.event("channel_unsubscribed", channel="news")
    assert (event["network"], event["reason"]) == (NET, "network_removed")
    with trio.fail_after(WAIT):
        await removed.wait()


async def test_subscribers_a_removed_networks_stop_caught_untold_are_told_after_it(
    mesh: Mesh,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    real_time_clock: trio.testing.MockClock,
) -> None:
    """Core takes up the removal's leave, but the channel's pump tells nobody (stuck, as one
    waiting for its restart) and its stop hangs, so the leave times out and the network's
    stop cuts it short: the subscriber is told once the network stopped."""
    _, b = await active_pair(mesh)
    stopping = trio.Event()
    stop_child = Supervisor.stop_child

    async def stuck(_pump: ChannelPump, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def hanging_stop(supervisor: Supervisor, name: str, **kwargs: Any) -> bool:
        if name.startswith("channel "):
            stopping.set()
            await trio.sleep_forever()
        return await stop_child(supervisor, name, **kwargs)

    monkeypatch.setattr(ChannelPump, "run", stuck)
    monkeypatch.setattr(Supervisor, "stop_child", hanging_stop)
    reader = await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    removed = trio.Event()

    async def remove() -> None:
        await b.call("network_remove", network=NET)
        removed.set()

    nursery.start_soon(remove)
    with trio.fail_after(WAIT):
        await stopping.wait()  # the pump told nobody within PUMP_END_TIMEOUT
    real_time_clock.jump(COMMAND_TIMEOUT)  # the leave's ask times out
    event = await reader.event("channel_unsubscribed", channel="news")
    assert (event["network"], event["reason"]) == (NET, "network_removed")
    with trio.fail_after(WAIT):
        await removed.wait()
