"""A subscription or claim the daemon ended, whose subscribe again or claim again fails for a
reason that may pass while the connection stays up (the daemon's `unavailable`: its network's
core restarted mid-subscribe; the client's `deadline`: the core was busy), is tried again on
that connection until the daemon takes it: the readers hear the channel again and the method
is served again, with no reconnect. So is one whose replay after a reconnect failed so, with
no further reconnect. Each failed try is told, and nothing is given up for it."""

from __future__ import annotations

import contextlib
from typing import Any

import trio
import trio.testing

from meshactors.actors import ChildSpec, Restart
from meshactors.client import ChannelGap, ChannelMessage, MeshClient, RequestContext
from meshactors.daemon.services import Services
from meshactors.wire.ipc import OpError
from tests.client.conftest import NETWORK, LocalDaemon
from tests.client.test_client import next_kind
from tests.support import StartGate, hold_op

LAN_CORE = "daemon/networks/network lan/core"
RETRY_WAIT = 30  # seconds a test may take: tries again after RESTORE_RETRY_FIRST and more
SHORT_CALL_TIMEOUT = 1.0  # seconds the serving client waits for an answer before `deadline`


async def echo(payload: Any, ctx: RequestContext) -> Any:
    return payload


async def occupy_core(services: Services, busy: trio.Event, free: trio.Event) -> None:
    """Keep lan's core busy (it handles one message at a time) from `busy` until `free`."""

    async def wait_until_free() -> None:
        busy.set()
        await free.wait()

    await services.networks.get("lan").ask_await("stay busy", wait_until_free, RETRY_WAIT)


async def drop_connection(admin: MeshClient, client: MeshClient) -> None:
    """Crash the daemon's actor of `client`'s connection: it closes, and the client reconnects
    and replays what it wants."""
    client_id = (await client.status())["client_id"]
    await admin.call("debug_crash", {"path": f"daemon/control/client {client_id}"})


async def occupy_core_until_removed(services: Services, busy: trio.Event) -> None:
    """Keep lan's core busy from `busy` until the network is removed, which fails the wait."""
    with contextlib.suppress(OpError):
        await occupy_core(services, busy, trio.Event())


def start_gate(services: Services, nursery: trio.Nursery) -> StartGate:
    """A child of lan's network supervisor that starts only once opened: until then the
    supervisor starts nothing else, so a subscribe waits in core for its channel's pump."""
    gate = StartGate()
    spec = ChildSpec("gate", gate, Restart.TEMPORARY)
    nursery.start_soon(services.networks.get("lan").start_child, spec)
    return gate


async def test_a_subscribe_again_answered_unavailable_is_tried_again_until_it_is_heard(
    local: LocalDaemon,
) -> None:
    """The network is removed (`channel_unsubscribed`) and added again; the subscribe again
    waits in the new core for the channel's pump when that core crashes: `unavailable`. The
    client subscribes again once the core is back, and the reader gets the next message."""
    local.debug_ops = True
    services = await local.start()
    async with (
        MeshClient(local.paths.socket) as client,
        MeshClient(local.paths.socket) as admin,
        trio.open_nursery() as nursery,
    ):
        await admin.ensure_networks([NETWORK])
        me = (await admin.status())["device_id"]
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(RETRY_WAIT):
                held = hold_op(services, "channel_subscribe")
                await admin.call("network_remove", {"network": "lan"})
                await held.entered.wait()  # the subscribe again waits for the network's return
                await admin.ensure_networks([NETWORK])
                gate = start_gate(services, nursery)
                await gate.starting.wait()
                held.go.set()
                await trio.testing.wait_all_tasks_blocked()  # core waits behind the gate
                await admin.call("debug_crash", {"path": LAN_CORE})
                failed = await next_kind(stream, "client_replay_failed")
                assert (failed["channel"], failed["code"]) == ("news", "unavailable")
                gate.opened.set()
                again = await next_kind(stream, "client_resubscribed")
                assert again == {"kind": "client_resubscribed", "network": "lan", "channel": "news"}
                await admin.channel_send_to("lan", "news", me, "heard")
                assert await news.__anext__() == ChannelGap("unsubscribed")
                assert await news.__anext__() == ChannelMessage("lan", me, "news", "heard")
        assert client.reconnects == 0


async def test_a_claim_again_past_its_deadline_is_tried_again_until_it_serves(
    local: LocalDaemon,
) -> None:
    """A restart of the network's core ends the claim (`handler_displaced`, `by` null); the
    claim again waits behind a core kept busy past the client's deadline. The client keeps the
    handler and claims again once the core answers, and calls are served again."""
    local.debug_ops = True
    services = await local.start()
    busy, free = trio.Event(), trio.Event()
    async with (
        MeshClient(local.paths.socket, call_timeout=SHORT_CALL_TIMEOUT) as server,
        MeshClient(local.paths.socket) as caller,
        trio.open_nursery() as nursery,
    ):
        await caller.ensure_networks([NETWORK])
        me = (await caller.status())["device_id"]
        await server.serve("lan", "echo", echo)
        stream = server.events()
        with trio.fail_after(RETRY_WAIT):
            held = hold_op(services, "rpc_register")
            await caller.call("debug_crash", {"path": LAN_CORE})
            assert (await next_kind(stream, "handler_displaced"))["by"] is None
            await held.entered.wait()  # the claim again waits until the core is busy
            nursery.start_soon(occupy_core, services, busy, free)
            await busy.wait()
            held.go.set()
            failed = await next_kind(stream, "client_replay_failed")
            assert (failed["method"], failed["code"]) == ("echo", "deadline")
            free.set()
            reclaimed = await next_kind(stream, "client_reclaimed")
            assert reclaimed == {"kind": "client_reclaimed", "network": "lan", "method": "echo"}
            assert (await caller.rpc_call("lan", me, "echo", 7))["payload"] == 7
        assert server.reconnects == 0


async def test_a_replayed_subscribe_answered_unavailable_is_tried_again_until_it_is_heard(
    local: LocalDaemon,
) -> None:
    """The connection is lost; the replay's subscribe on the next one waits in lan's core for
    the channel's pump when that core crashes: `unavailable`. The client subscribes again on
    that connection once the core is back, and the reader gets the next message."""
    local.debug_ops = True
    services = await local.start()
    async with (
        MeshClient(local.paths.socket) as client,
        MeshClient(local.paths.socket) as admin,
        trio.open_nursery() as nursery,
    ):
        await admin.ensure_networks([NETWORK])
        me = (await admin.status())["device_id"]
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(RETRY_WAIT):
                held = hold_op(services, "channel_subscribe")
                await drop_connection(admin, client)
                await held.entered.wait()  # the replay's subscribe
                gate = start_gate(services, nursery)
                await gate.starting.wait()
                held.go.set()
                await trio.testing.wait_all_tasks_blocked()  # core waits behind the gate
                await admin.call("debug_crash", {"path": LAN_CORE})
                failed = await next_kind(stream, "client_replay_failed")
                assert (failed["channel"], failed["code"]) == ("news", "unavailable")
                await next_kind(stream, "client_reconnected")
                gate.opened.set()
                again = await next_kind(stream, "client_resubscribed")
                assert again == {"kind": "client_resubscribed", "network": "lan", "channel": "news"}
                await admin.channel_send_to("lan", "news", me, "heard")
                assert await news.__anext__() == ChannelGap("disconnected")
                assert await news.__anext__() == ChannelMessage("lan", me, "news", "heard")
        assert client.reconnects == 1


async def test_a_replayed_claim_answered_timeout_is_tried_again_until_it_serves(
    local: LocalDaemon,
) -> None:
    """The connection is lost; the replay's claim on the next one waits behind a busy core
    until the daemon answers `timeout`, and the network is removed meanwhile, so it is never
    carried out. The client keeps the handler and claims again on that connection once the
    network is back, and calls are served again."""
    local.debug_ops = True
    services = await local.start()
    busy = trio.Event()
    async with (
        MeshClient(local.paths.socket) as server,
        MeshClient(local.paths.socket) as caller,
        trio.open_nursery() as nursery,
    ):
        await caller.ensure_networks([NETWORK])
        me = (await caller.status())["device_id"]
        await server.serve("lan", "echo", echo)
        stream = server.events()
        with trio.fail_after(RETRY_WAIT):
            replayed = hold_op(services, "rpc_register")
            await drop_connection(caller, server)
            await replayed.entered.wait()
            nursery.start_soon(occupy_core_until_removed, services, busy)
            await busy.wait()
            retried = hold_op(services, "rpc_register")  # held until the network is back
            replayed.go.set()
            await trio.testing.wait_all_tasks_blocked()  # the replay's claim waits in core
            await caller.call("network_remove", {"network": "lan"})  # its ask of core times out
            failed = await next_kind(stream, "client_replay_failed")
            assert (failed["method"], failed["code"]) == ("echo", "timeout")
            await next_kind(stream, "client_reconnected")
            await caller.ensure_networks([NETWORK])
            retried.go.set()
            reclaimed = await next_kind(stream, "client_reclaimed")
            assert reclaimed == {"kind": "client_reclaimed", "network": "lan", "method": "echo"}
            assert (await caller.rpc_call("lan", me, "echo", 7))["payload"] == 7
        assert server.reconnects == 1
