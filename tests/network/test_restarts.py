"""Restarts lose nothing silently: `debug_crash` (with `--debug-ops`) crashes any actor of the
live tree, and after it restarts, traffic, subscriptions and reliable sends carry on."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import ActorState, ChildSpec, Restart
from meshactors.network.app_frames import Chan
from meshactors.network.network import Network
from meshactors.network.rpc import MAX_TIMEOUT_MS
from tests.network.appclient import AppClient, network_children
from tests.network.conftest import NET, UNREACHABLE, WAIT, Daemon, Mesh, OpFailed, approve_both
from tests.network.rawpeer import approved_raw_peer
from tests.support import StartGate

WAIT_MS = int(WAIT * 1000)


async def client_of(daemon: Daemon, nursery: trio.Nursery) -> AppClient:
    return await AppClient.open(daemon.services.paths.socket, nursery)


async def debug_pair(mesh: Mesh, *, embedded: bool = False) -> tuple[Daemon, Daemon]:
    """Daemons a and b with `--debug-ops`, joined to NET and active both ways; with `embedded`
    through a broker b hosts (`--broker-listen`), else through the mesh's."""
    a = await mesh.daemon("a", debug_ops=True)
    if not embedded:
        b, url = await mesh.daemon("b", debug_ops=True), mesh.url
    else:
        b = await mesh.daemon("b", debug_ops=True, broker_listen=("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{b.services.tree.children['broker'].figures()['port']}/v1"
    await a.join(url)
    await b.join(url)
    await approve_both(a, b)
    return a, b


# Children of the daemon's root (rest_for_one) whose crash restarts `control` as well, which
# closes every client connection: the connection's end tells each program it lost its
# subscriptions and claims (the client library connects again and replays them).
CLOSING = ("daemon/store", "daemon/events", "daemon/broker", "daemon/networks", "daemon/control")


async def crash(mesh: Mesh, daemon: Daemon, path: str) -> None:
    """Crash the actor at `path` on `daemon`; when that restarts `control`, wait until it has
    and give the test's connections to `daemon` new ones."""
    if path not in CLOSING:
        await daemon.call("debug_crash", path=path)
        return
    restarts = daemon.services.tree.children["control"].restarts
    with contextlib.suppress(EOFError):  # its connection may close before the answer
        await daemon.call("debug_crash", path=path)
    await mesh.reconnect(daemon, restarts)


async def test_debug_crash_is_unknown_without_the_flag(mesh: Mesh) -> None:
    daemon = await mesh.daemon("plain")
    with pytest.raises(OpFailed) as failure:
        await daemon.call("debug_crash", path="daemon/outbox")
    assert failure.value.code == "unknown_op"
    assert "debug_crash" not in (await daemon.call("version"))["ops"]


async def test_debug_crash_restarts_the_actor_at_the_path(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    daemon = await mesh.daemon("debug", debug_ops=True)
    assert "debug_crash" in (await daemon.call("version"))["ops"]
    client = await AppClient.open(daemon.services.paths.socket, nursery)
    before = await client.call("status")
    crashed = await daemon.call("debug_crash", path="daemon/outbox")
    assert crashed == {"path": "daemon/outbox", "kind": "outbox", "crashed": True}
    with pytest.raises(OpFailed) as missing:
        await daemon.call("debug_crash", path="daemon/nothing here")
    assert missing.value.code == "not_found"
    with pytest.raises(OpFailed) as root:
        await daemon.call("debug_crash", path="daemon")
    assert root.value.code == "conflict"
    after = await client.call("status")
    assert after["client_id"] == before["client_id"]
    assert daemon.services.tree.children["outbox"].restarts == 1
    assert daemon.services.tree.children["control"].restarts == 0


async def reliable(
    sender: AppClient,
    peer: Daemon,
    channel: str,
    payload: object,
    *,
    via: Daemon | None = None,
    message_id: str | None = None,
) -> object:
    """A reliable send, resent until acknowledged; returns how many subscribers it reached.
    With `via` (the sender's daemon), a send refused because the peer is not active (its link
    restarts) waits until `via` sees it active again and is sent again, as a program would;
    `message_id` is the program's id for the message."""
    chosen = {} if message_id is None else {"message_id": message_id}
    while True:
        after = via.last_event_id if via is not None else 0
        try:
            acked = await sender.call(
                "channel_send_reliable",
                network=NET,
                channel=channel,
                peer=peer.device_id,
                payload=payload,
                ttl_ms=WAIT_MS,
                **chosen,
            )
        except OpFailed as refused:
            if via is None or refused.code not in ("peer_not_active", "link_down"):
                raise
            await reachable(via, peer, after)
            continue
        return acked["subscribers"]


async def reachable(daemon: Daemon, peer: Daemon, after: int = 0) -> None:
    """Wait until `daemon` sees `peer` active (again, after event `after`)."""
    while True:
        seen = await daemon.peer(peer)
        if seen is not None and seen["status"] == "active":
            return
        await daemon.wait_event("peer_active", after=after, device_id=peer.device_id)


@pytest.mark.parametrize(
    "actor",
    ["link", "core", "channel news", "network root", "daemon/control/listener", "daemon/notifier"],
)
async def test_a_subscription_still_delivers_after_an_actor_crashes(
    mesh: Mesh, nursery: trio.Nursery, actor: str
) -> None:
    a, b = await debug_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    assert await reliable(sender, b, "news", 1) == 1
    await b.call("debug_crash", path=crash_path(actor))
    assert await reliable(sender, b, "news", 2, via=a) == 1
    received = await reader.count("channel_inbound", 2)
    assert [event["payload"] for event in received] == [1, 2]
    children = network_children(await b.call("inspect"), NET)
    me = (await reader.call("status"))["client_id"]
    assert children["channel news"]["figures"]["subscribers"] == [me]


def crash_path(actor: str) -> str:
    """The path of one of NET's actors on a daemon ("network root" for the network itself), or
    a path of the daemon's own level as given."""
    if actor.startswith("daemon/"):
        return actor
    network = f"daemon/networks/network {NET}"
    return network if actor == "network root" else f"{network}/{actor}"


@pytest.mark.parametrize("actor", ["core", "network root"])
async def test_a_claim_a_restart_ended_is_told_and_calls_resume_once_claimed_again(
    mesh: Mesh, nursery: trio.Nursery, actor: str
) -> None:
    a, b = await debug_pair(mesh)
    caller, server = await client_of(a, nursery), await client_of(b, nursery)
    await server.call("rpc_register", network=NET, method="echo")

    async def call_echo(payload: int) -> object:
        async with trio.open_nursery() as serving:
            serving.start_soon(serve_once, server, payload)
            answer = await caller.call(
                "rpc_call", network=NET, peer=b.device_id, method="echo", payload=payload
            )
        return answer["payload"]

    assert await call_echo(1) == 1
    await b.call("debug_crash", path=crash_path(actor))
    told = await server.event("handler_displaced")
    assert told == {"kind": "handler_displaced", "network": NET, "method": "echo", "by": None}
    await server.call("rpc_register", network=NET, method="echo")
    await reliable(caller, b, "barrier", "b is reachable again", via=a)
    assert await call_echo(2) == 2


async def test_a_link_crash_keeps_claims_and_calls_resume(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await debug_pair(mesh)
    caller, server = await client_of(a, nursery), await client_of(b, nursery)
    await server.call("rpc_register", network=NET, method="echo")
    await b.call("debug_crash", path=crash_path("link"))
    await reliable(caller, b, "barrier", "b is reachable again", via=a)
    async with trio.open_nursery() as serving:
        serving.start_soon(serve_once, server, 3)
        answer = await caller.call(
            "rpc_call", network=NET, peer=b.device_id, method="echo", payload=3
        )
    assert answer["payload"] == 3  # served by the claim made before the crash
    assert [e for e in server.events if e["kind"] == "handler_displaced"] == []


@pytest.mark.parametrize("actor", ["core", "network root"])
async def test_a_crash_of_the_caller_s_core_ends_its_streams_on_the_serving_side_at_once(
    mesh: Mesh, nursery: trio.Nursery, actor: str
) -> None:
    """The caller's stream fails there (`unavailable` as core stops, `peer_not_active` when
    the link stopped first) and no cancel is sent, yet the serving side does not hold it till
    its deadline: the link restarts with core, and the caller leaving the broker ends the call
    there (`peer_left`)."""
    a, b = await debug_pair(mesh)
    caller, server = await client_of(a, nursery), await client_of(b, nursery)
    await server.call("rpc_register", network=NET, method="forever", streaming=True)
    started = await caller.call(
        "rpc_call_stream",
        network=NET,
        peer=b.device_id,
        method="forever",
        timeout_ms=MAX_TIMEOUT_MS,
    )
    inbound = await server.event("rpc_inbound", method="forever")
    await a.call("debug_crash", path=crash_path(actor))
    end = await caller.event("rpc_call_stream_end", request_id=started["request_id"])
    assert end["error"]["code"] in ("unavailable", "peer_not_active")
    told = await server.event("rpc_cancelled", request_id=inbound["request_id"])
    assert told["reason"] == "peer_left"


async def serve_once(server: AppClient, payload: int) -> None:
    """Answer one inbound call with its own payload."""
    inbound = await server.event("rpc_inbound", method="echo")
    await server.call("rpc_respond", request_id=inbound["request_id"], payload=payload)


@pytest.mark.parametrize(
    "side, actor",
    [
        ("b", "link"),
        ("b", "core"),
        ("b", "network root"),
        ("b", "daemon/networks"),
        ("a", "daemon/networks"),
        ("b", "daemon/store"),
    ],
)
async def test_retained_values_survive_a_restart(
    mesh: Mesh, nursery: trio.Nursery, side: str, actor: str
) -> None:
    a, b = await debug_pair(mesh)
    sender = await client_of(a, nursery)
    await sender.call(
        "channel_send_to",
        network=NET,
        channel="presence",
        peer=b.device_id,
        payload="here",
        retain=True,
    )
    await reliable(sender, b, "presence-barrier", "after the retained one")
    await crash(mesh, a if side == "a" else b, crash_path(actor))
    if side == "a" and actor in CLOSING:
        sender = await client_of(a, nursery)  # the crash closed its connection
    await reliable(sender, b, "presence-barrier", "b is reachable again", via=a)
    late = await client_of(b, nursery)
    assert (await late.call("channel_subscribe", network=NET, channel="presence"))["retained"] == 1
    retained = await late.event("channel_inbound")
    assert (retained["payload"], retained["retained"]) == ("here", True)


@pytest.mark.parametrize(
    "side, actor",
    [
        ("b", "link"),
        ("b", "core"),
        ("b", "channel orders"),
        ("a", "link"),
        ("b", "daemon/control/listener"),
        ("a", "daemon/notifier"),
    ],
)
async def test_reliable_sends_under_a_crash_lose_nothing_and_duplicate_nothing(
    mesh: Mesh, nursery: trio.Nursery, side: str, actor: str
) -> None:
    a, b = await debug_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="orders")
    count = 40
    crashed = a if side == "a" else b
    reached = await send_under_crash(
        sender, a, b, "orders", count, functools.partial(crash, mesh, crashed, crash_path(actor))
    )
    assert reached == [1] * count
    received = await reader.count("channel_inbound", count)
    await reliable(sender, b, "orders", "last", via=a)  # anything resent late would come before it
    received = await reader.count("channel_inbound", count + 1)
    assert [event["payload"] for event in received] == [*range(count), "last"]


async def send_under_crash(
    sender: AppClient,
    a: Daemon,
    b: Daemon,
    channel: str,
    count: int,
    crash: Callable[[], Awaitable[None]],
) -> list[object]:
    """Reliable sends of 0 … count-1 from `sender` (on a) to b's `channel`, one after another,
    with `crash` run once half of them are on their way; the subscriber counts their acks gave."""
    reached: list[object] = []
    halfway = trio.Event()

    async def send_all() -> None:
        for n in range(count):
            if n == count // 2:
                halfway.set()
            reached.append(await reliable(sender, b, channel, n, via=a))

    async with trio.open_nursery() as traffic:
        traffic.start_soon(send_all)
        await halfway.wait()
        await crash()
    return reached


async def test_a_reliable_send_retried_with_its_id_after_a_sender_core_crash_arrives_once(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await debug_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="orders")
    assert await reliable(sender, b, "orders", "once", message_id="order-1") == 1
    await a.call("debug_crash", path=crash_path("core"))  # as if its answer had been lost
    assert await reliable(sender, b, "orders", "once", via=a, message_id="order-1") == 1
    assert await reliable(sender, b, "orders", "next", via=a) == 1
    received = await reader.count("channel_inbound", 2)
    assert [event["payload"] for event in received] == ["once", "next"]
    for bad in ("", "x" * 65, "tab\t", "é"):
        with pytest.raises(OpFailed) as refused:
            await reliable(sender, b, "orders", "bad", message_id=bad)
        assert refused.value.code == "invalid_params"


@pytest.mark.parametrize("actor", CLOSING)
async def test_a_crash_that_restarts_control_closes_connections_and_traffic_resumes(
    mesh: Mesh, nursery: trio.Nursery, actor: str
) -> None:
    a, b = await debug_pair(mesh, embedded=actor == "daemon/broker")
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    reached = await send_under_crash(
        sender, a, b, "news", 40, functools.partial(crash, mesh, b, actor)
    )
    await reader.wait_closed()  # how its program learns that its subscription is gone
    got = [event["payload"] for event in reader.events if event["kind"] == "channel_inbound"]
    assert got == sorted(set(got))  # in order, none twice
    assert set(got) <= {n for n, subscribers in enumerate(reached) if subscribers == 1}
    assert reached[: len(reached) // 2 - 1] == [1] * (len(reached) // 2 - 1)
    listed = b.services.tree.children["control"].children.values()
    assert {node.state for node in listed} == {ActorState.RUNNING}  # no closed connection left
    again = await client_of(b, nursery)
    await again.call("channel_subscribe", network=NET, channel="news")
    assert await reliable(sender, b, "news", "after", via=a) == 1
    assert [event["payload"] for event in await again.count("channel_inbound", 1)] == ["after"]


@pytest.mark.parametrize(
    "side, actor",
    [
        ("b", "link"),
        ("a", "link"),
        ("a", "network root"),
        ("a", "daemon/store"),
        ("b", "daemon/store"),
        ("b", "daemon/events"),
        ("a", "daemon/networks"),
        ("b", "daemon/control"),
        ("a", "daemon/control/listener"),
    ],
)
async def test_durable_sends_under_a_crash_all_arrive_once(
    mesh: Mesh, nursery: trio.Nursery, side: str, actor: str
) -> None:
    a, b = await debug_pair(mesh)
    count = 30
    ids = []
    for n in range(count):
        if n == count // 2:
            await crash(mesh, a if side == "a" else b, crash_path(actor))
        ids.append((await a.call("send", network=NET, to=b.device_id, message=f"m{n}"))["id"])
    for row_id in ids:
        await a.wait_event("message_delivered", id=row_id)
    messages = (await b.call("inbox", limit=500))["messages"]
    assert sorted(m["message"] for m in messages) == sorted(f"m{n}" for n in range(count))


async def test_a_store_crash_while_networks_restarts_holds_up_no_restart(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """The store crashes while the root restarts `networks`, whose start (a network's core
    loading its roster) then asks it: the root's loop, in that start, would handle the store's
    exit, and so restart it, only once the ask timed out (STORE_CALL_TIMEOUT, past WAIT). The
    start is abandoned and the store's restart starts both, in order."""
    a, b = await debug_pair(mesh)
    store = b.services.tree.children["store"]
    crashed: list[bool] = []

    def crash_the_store(network: Network) -> None:
        if not crashed:  # as networks' restart builds the saved network, before it starts it
            crashed.append(store.request_crash("while networks restarts"))

    b.services.networks.on_build.append(crash_the_store)
    await crash(mesh, b, "daemon/networks")
    assert crashed == [True]
    await reliable(await client_of(a, nursery), b, "barrier", "b is reachable again", via=a)
    assert store.restarts == 1


async def test_durable_sends_survive_an_outbox_crash(mesh: Mesh) -> None:
    a, b = await debug_pair(mesh)
    first = (await a.call("send", network=NET, to=b.device_id, message="before"))["id"]
    await a.call("debug_crash", path="daemon/outbox")
    second = (await a.call("send", network=NET, to=b.device_id, message="after"))["id"]
    for row_id in (first, second):
        await a.wait_event("message_delivered", id=row_id)
    messages = (await b.call("inbox", limit=500))["messages"]
    assert sorted(m["message"] for m in messages) == ["after", "before"]


async def test_a_crashed_client_connection_closes_and_a_new_one_subscribes(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await debug_pair(mesh)
    sender, reader = await client_of(a, nursery), await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="news")
    me = (await reader.call("status"))["client_id"]
    await b.call("debug_crash", path=f"daemon/control/client {me}")
    await reader.wait_closed()
    assert await reliable(sender, b, "news", "nobody") == 0  # its subscription went with it
    again = await client_of(b, nursery)
    await again.call("channel_subscribe", network=NET, channel="news")
    assert await reliable(sender, b, "news", "you") == 1
    assert (await again.event("channel_inbound"))["payload"] == "you"


async def test_a_core_restart_keeps_no_retained_value_of_a_peer_without_a_session(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """Peers send their retained values again once active with the restarted core; one that
    never is (it left meanwhile, or never says hello again) leaves no stale value behind."""
    b, raw = await approved_raw_peer(mesh, nursery, debug_ops=True)
    reader = await client_of(b, nursery)
    await reader.call("channel_subscribe", network=NET, channel="presence")
    await raw.send_frame(b.device_id, Chan("presence", "here", retain=True))
    assert (await reader.event("channel_inbound"))["payload"] == "here"

    await crash(mesh, b, crash_path("core"))  # the raw peer never says hello again
    late = await client_of(b, nursery)
    subscribed = await late.call("channel_subscribe", network=NET, channel="presence")
    assert subscribed["retained"] == 0


def pumps_seen(tree: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The channels whose pumps the network supervisor runs, and those its core's `channels`
    part records, in an `inspect` answer."""
    children = network_children(tree, NET)
    running = [name.removeprefix("channel ") for name in children if name.startswith("channel ")]
    return sorted(running), children["core"]["figures"]["channels"]["channels"]


@pytest.mark.parametrize("step", ["channel_subscribe", "channel_unsubscribe"])
async def test_a_core_crash_while_the_network_starts_or_stops_a_pump_keeps_the_channel_usable(
    mesh: Mesh, nursery: trio.Nursery, step: str
) -> None:
    """Core crashes while it waits for the network supervisor to start (or stop) a channel's
    pump, which the supervisor still does after the crash: the channel stays usable, and the
    pumps running are the ones core records. A gate child holds the supervisor in a start so
    that core's request waits there long enough to crash core (else a few scheduler steps)."""
    daemon = await mesh.daemon("solo", debug_ops=True)
    await daemon.join(UNREACHABLE)
    reader, sender = await client_of(daemon, nursery), await client_of(daemon, nursery)
    if step == "channel_unsubscribe":
        await reader.call("channel_subscribe", network=NET, channel="news")
    gate = StartGate()
    spec = ChildSpec("gate", gate, Restart.TEMPORARY)
    nursery.start_soon(daemon.network().start_child, spec)
    with trio.fail_after(WAIT):
        await gate.starting.wait()
    asked = await reader.send(step, network=NET, channel="news")
    await trio.testing.wait_all_tasks_blocked()  # core waits on the supervisor behind the gate
    await daemon.call("debug_crash", path=crash_path("core"))
    with pytest.raises(OpFailed) as dropped:
        await reader.answer(asked)
    assert dropped.value.code == "unavailable"
    gate.opened.set()

    # Served by the new core; the supervisor starts its pump after what it still had to do.
    await reader.call("channel_subscribe", network=NET, channel="other")
    assert pumps_seen(await sender.call("inspect")) == (["other"], ["other"])
    assert (await reader.call("channel_subscribe", network=NET, channel="news"))["retained"] == 0
    me = daemon.device_id
    await sender.call("channel_send_to", network=NET, channel="news", peer=me, payload=1)
    assert (await reader.event("channel_inbound"))["payload"] == 1
    assert pumps_seen(await sender.call("inspect")) == (["news", "other"], ["news", "other"])
    for channel in ("news", "other"):
        left = await reader.call("channel_unsubscribe", network=NET, channel=channel)
        assert left == {"unsubscribed": True}
    assert pumps_seen(await sender.call("inspect")) == ([], [])


async def test_a_core_crash_while_it_releases_a_closed_connection_releases_it_after_the_restart(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """Core releases a closed connection's channels one at a time and crashes mid-release (a
    gate child holds the network supervisor, so that core waits there to stop the first
    channel's pump): the release is asked again and the restarted core ends the rest. The
    crash used to leave the connection a reader of the channels after, their pumps running."""
    daemon = await mesh.daemon("solo", debug_ops=True)
    await daemon.join(UNREACHABLE)
    reader, watcher = await client_of(daemon, nursery), await client_of(daemon, nursery)
    for channel in ("first", "second"):
        await reader.call("channel_subscribe", network=NET, channel=channel)
    gate = StartGate()
    nursery.start_soon(daemon.network().start_child, ChildSpec("gate", gate, Restart.TEMPORARY))
    with trio.fail_after(WAIT):
        await gate.starting.wait()
    await reader.stream.send_eof()
    await trio.testing.wait_all_tasks_blocked()  # core waits on the supervisor behind the gate
    await watcher.call("debug_crash", path=crash_path("core"))
    await trio.testing.wait_all_tasks_blocked()  # the crash dropped the release core was in
    gate.opened.set()
    await reader.wait_closed()
    assert pumps_seen(await watcher.call("inspect")) == ([], [])
