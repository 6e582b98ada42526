"""A subscription or claim the daemon ended, whose subscribe again or claim again fails for a
reason that may pass while the connection stays up (the daemon's `unavailable`: its network's
core restarted mid-subscribe; the client's `deadline`: the core was busy), is tried again on
that connection until the daemon takes it: the readers hear the channel again and the method
is served again, with no reconnect. So is one whose replay after a reconnect failed so, with
no further reconnect. Each failed try is told, and nothing is given up for it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio
import trio.testing

from meshactors.actors import ChildSpec, Restart, Subscriber
from meshactors.client import ChannelGap, ChannelMessage, EventStream, MeshClient, RequestContext
from meshactors.client.mesh import DEFAULT_CALL_TIMEOUT, ChannelItem
from meshactors.daemon.services import Services
from meshactors.wire.ipc import OpError
from tests.client.conftest import NETWORK, LocalDaemon
from tests.client.test_client import next_kind
from tests.support import HeldOp, StartGate, hold_op

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


@attrs.define(eq=False)
class NewsScene:
    """A daemon with lan joined, `client` subscribed to its `news` (read by `news`, its events
    by `stream`), `admin` to drive the daemon, and a nursery for what runs beside the test."""

    services: Services
    client: MeshClient
    admin: MeshClient
    nursery: trio.Nursery
    me: str
    stream: EventStream
    news: Subscriber[ChannelItem]

    async def fail_behind_a_crash(self, held: HeldOp) -> StartGate:
        """Let the held subscribe on into core, which waits for the channel's pump behind a
        child of lan's supervisor that starts only once opened, and crash core: the client is
        told `unavailable`. Returns that child, for the test to open."""
        gate = StartGate()
        spec = ChildSpec("gate", gate, Restart.TEMPORARY)
        self.nursery.start_soon(self.services.networks.get("lan").start_child, spec)
        await gate.starting.wait()
        held.go.set()
        await trio.testing.wait_all_tasks_blocked()  # core waits behind the gate
        await self.admin.call("debug_crash", {"path": LAN_CORE})
        failed = await next_kind(self.stream, "client_replay_failed")
        assert (failed["channel"], failed["code"]) == ("news", "unavailable")
        return gate

    async def hear_again(self, gate: StartGate, gap: str) -> None:
        """Open the gate: the client subscribes again, and the reader, after a gap for `gap`,
        gets the next message."""
        gate.opened.set()
        again = await next_kind(self.stream, "client_resubscribed")
        assert again == {"kind": "client_resubscribed", "network": "lan", "channel": "news"}
        await self.admin.channel_send_to("lan", "news", self.me, "heard")
        assert await self.news.__anext__() == ChannelGap(gap)
        assert await self.news.__anext__() == ChannelMessage("lan", self.me, "news", "heard")


@contextlib.asynccontextmanager
async def news_scene(local: LocalDaemon) -> AsyncIterator[NewsScene]:
    """Start the daemon (with `debug_crash`) and set up a NewsScene in it."""
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
            yield NewsScene(services, client, admin, nursery, me, stream, news)


@attrs.define(eq=False)
class EchoScene:
    """A daemon with lan joined, `server` serving `echo` on it (its events read by `stream`),
    `caller` to call it and drive the daemon, and a nursery for what runs beside the test."""

    services: Services
    server: MeshClient
    caller: MeshClient
    nursery: trio.Nursery
    me: str
    stream: EventStream

    async def serves_again(self) -> None:
        """The client claims `echo` again, and calls are served again."""
        reclaimed = await next_kind(self.stream, "client_reclaimed")
        assert reclaimed == {"kind": "client_reclaimed", "network": "lan", "method": "echo"}
        assert (await self.caller.rpc_call("lan", self.me, "echo", 7))["payload"] == 7


@contextlib.asynccontextmanager
async def echo_scene(
    local: LocalDaemon, call_timeout: float = DEFAULT_CALL_TIMEOUT
) -> AsyncIterator[EchoScene]:
    """Start the daemon (with `debug_crash`) and set up an EchoScene in it, its server's
    calls to the daemon given `call_timeout`."""
    local.debug_ops = True
    services = await local.start()
    async with (
        MeshClient(local.paths.socket, call_timeout=call_timeout) as server,
        MeshClient(local.paths.socket) as caller,
        trio.open_nursery() as nursery,
    ):
        await caller.ensure_networks([NETWORK])
        me = (await caller.status())["device_id"]
        await server.serve("lan", "echo", echo)
        yield EchoScene(services, server, caller, nursery, me, server.events())


async def test_a_subscribe_again_answered_unavailable_is_tried_again_until_it_is_heard(
    local: LocalDaemon,
) -> None:
    """The network is removed (`channel_unsubscribed`) and added again; the subscribe again
    waits in the new core for the channel's pump when that core crashes: `unavailable`. The
    client subscribes again once the core is back, and the reader gets the next message."""
    async with news_scene(local) as scene:
        with trio.fail_after(RETRY_WAIT):
            held = hold_op(scene.services, "channel_subscribe")
            await scene.admin.call("network_remove", {"network": "lan"})
            await held.entered.wait()  # the subscribe again waits for the network's return
            await scene.admin.ensure_networks([NETWORK])
            gate = await scene.fail_behind_a_crash(held)
            await scene.hear_again(gate, "unsubscribed")
        assert scene.client.reconnects == 0


async def test_a_claim_again_past_its_deadline_is_tried_again_until_it_serves(
    local: LocalDaemon,
) -> None:
    """A restart of the network's core ends the claim (`handler_displaced`, `by` null); the
    claim again waits behind a core kept busy past the client's deadline. The client keeps the
    handler and claims again once the core answers, and calls are served again."""
    busy, free = trio.Event(), trio.Event()
    async with echo_scene(local, SHORT_CALL_TIMEOUT) as scene:
        with trio.fail_after(RETRY_WAIT):
            held = hold_op(scene.services, "rpc_register")
            await scene.caller.call("debug_crash", {"path": LAN_CORE})
            assert (await next_kind(scene.stream, "handler_displaced"))["by"] is None
            await held.entered.wait()  # the claim again waits until the core is busy
            scene.nursery.start_soon(occupy_core, scene.services, busy, free)
            await busy.wait()
            held.go.set()
            failed = await next_kind(scene.stream, "client_replay_failed")
            assert (failed["method"], failed["code"]) == ("echo", "deadline")
            free.set()
            await scene.serves_again()
        assert scene.server.reconnects == 0


async def test_a_replayed_subscribe_answered_unavailable_is_tried_again_until_it_is_heard(
    local: LocalDaemon,
) -> None:
    """The connection is lost; the replay's subscribe on the next one waits in lan's core for
    the channel's pump when that core crashes: `unavailable`. The client subscribes again on
    that connection once the core is back, and the reader gets the next message."""
    async with news_scene(local) as scene:
        with trio.fail_after(RETRY_WAIT):
            held = hold_op(scene.services, "channel_subscribe")
            await drop_connection(scene.admin, scene.client)
            await held.entered.wait()  # the replay's subscribe
            gate = await scene.fail_behind_a_crash(held)
            await next_kind(scene.stream, "client_reconnected")
            await scene.hear_again(gate, "disconnected")
        assert scene.client.reconnects == 1


async def test_a_replayed_claim_answered_timeout_is_tried_again_until_it_serves(
    local: LocalDaemon,
) -> None:
    """The connection is lost; the replay's claim on the next one waits behind a busy core
    until the daemon answers `timeout`, and the network is removed meanwhile, so it is never
    carried out. The client keeps the handler and claims again on that connection once the
    network is back, and calls are served again."""
    busy = trio.Event()
    async with echo_scene(local) as scene:
        with trio.fail_after(RETRY_WAIT):
            replayed = hold_op(scene.services, "rpc_register")
            await drop_connection(scene.caller, scene.server)
            await replayed.entered.wait()
            scene.nursery.start_soon(occupy_core_until_removed, scene.services, busy)
            await busy.wait()
            retried = hold_op(scene.services, "rpc_register")  # held until the network is back
            replayed.go.set()
            await trio.testing.wait_all_tasks_blocked()  # the replay's claim waits in core
            await scene.caller.call("network_remove", {"network": "lan"})  # core's ask times out
            failed = await next_kind(scene.stream, "client_replay_failed")
            assert (failed["method"], failed["code"]) == ("echo", "timeout")
            await next_kind(scene.stream, "client_reconnected")
            await scene.caller.ensure_networks([NETWORK])
            retried.go.set()
            await scene.serves_again()
        assert scene.server.reconnects == 1
