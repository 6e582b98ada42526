"""The network's state has one owner: the rpc, channels and state-map code ops reach (claims,
calls, answers, cancels, subscriptions, sends, a closed connection's release, state reads and
writes) runs in the `core` actor's task, never in the connection's."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from meshactors.actors import current_node
from meshactors.netstate.replica import StateReplica
from meshactors.network.channels import Channels
from meshactors.network.core import NetworkCore
from meshactors.network.rpc import Rpc
from tests.network.appclient import AppClient
from tests.network.conftest import NET, Mesh, active_pair

WAIT = 10.0
RPC_METHODS = (
    "register",
    "unregister",
    "call",
    "call_stream",
    "respond",
    "queue_chunk",
    "queue_end",
    "cancel",
    "client_gone",
)
CHANNEL_METHODS = (
    "subscribe",
    "unsubscribe",
    "send_to",
    "send_all",
    "start_reliable",
    "end_reliable",
    "client_gone",
)


def running_actor() -> str:
    """The kind of the actor whose task runs now ("core", "client", ...)."""
    return current_node().kind


@attrs.define
class TasksOf:
    """For each watched method, the kinds of the actors it ran in; `released` is set once a
    closed connection was released."""

    seen: dict[str, set[str]]
    released: trio.Event = attrs.field(factory=trio.Event)

    def only_core(self) -> bool:
        """Whether every watched method ran, and only in core."""
        return all(kinds == {NetworkCore.kind} for kinds in self.seen.values())


def record(monkeypatch: pytest.MonkeyPatch, cls: type, names: tuple[str, ...]) -> TasksOf:
    """Record the actor each of `cls`'s methods `names` is called in."""
    tasks = TasksOf({name: set() for name in names})

    def recorded(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tasks.seen[name].add(running_actor())
            if name == "client_gone":
                tasks.released.set()
            return method(*args, **kwargs)

        return wrapper

    for name in names:
        monkeypatch.setattr(cls, name, recorded(name, getattr(cls, name)))
    return tasks


async def test_ops_reach_rpc_only_through_core(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks_of_rpc = record(monkeypatch, Rpc, RPC_METHODS)
    a, b = await active_pair(mesh)
    caller = await AppClient.open(a.services.paths.socket, nursery)
    server = await AppClient.open(b.services.paths.socket, nursery)
    await server.call("rpc_register", network=NET, method="echo")
    with trio.fail_after(WAIT):
        asked = await caller.send(
            "rpc_call", network=NET, peer=b.device_id, method="echo", payload=1
        )
        inbound = await server.event("rpc_inbound", method="echo")
        await server.call("rpc_respond", request_id=inbound["request_id"], payload=1)
        assert (await caller.answer(asked))["payload"] == 1
        await server.call("rpc_register", network=NET, method="count", streaming=True)
        to_count = {"network": NET, "peer": b.device_id, "method": "count"}
        await caller.call("rpc_call_stream", payload=2, **to_count)
        inbound = await server.event("rpc_inbound", method="count")
        await server.call("rpc_stream_chunk", request_id=inbound["request_id"], payload="c")
        await server.call("rpc_stream_end", request_id=inbound["request_id"])
        assert (await caller.event("rpc_call_stream_chunk"))["payload"] == "c"
        await caller.event("rpc_call_stream_end")
        streamed = await caller.call("rpc_call_stream", payload=3, **to_count)
        await caller.call("rpc_cancel", request_id=streamed["request_id"])
        await server.call("rpc_unregister", network=NET, method="echo")
        await server.aclose()
        await tasks_of_rpc.released.wait()  # the close's cleanup asks core
    assert tasks_of_rpc.only_core(), tasks_of_rpc.seen


async def test_ops_reach_channels_only_through_core(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = record(monkeypatch, Channels, CHANNEL_METHODS)
    a, b = await active_pair(mesh)
    sender = await AppClient.open(a.services.paths.socket, nursery)
    reader = await AppClient.open(b.services.paths.socket, nursery)
    with trio.fail_after(WAIT):
        await reader.call("channel_subscribe", network=NET, channel="news")
        to_b = {"network": NET, "channel": "news", "peer": b.device_id}
        await sender.call("channel_send_to", payload=1, **to_b)
        await sender.call("channel_send_all", network=NET, channel="news", payload=2)
        acked = await sender.call("channel_send_reliable", payload=3, ttl_ms=10_000, **to_b)
        assert acked == {"acknowledged": True, "subscribers": 1}
        received = [(await reader.event("channel_inbound"))["payload"] for _ in range(3)]
        assert received == [1, 2, 3]
        await reader.call("channel_unsubscribe", network=NET, channel="news")
        await reader.call("channel_subscribe", network=NET, channel="news")
        await reader.aclose()
        await tasks.released.wait()  # the close's cleanup asks core
    assert tasks.only_core(), tasks.seen


async def test_ops_and_peers_reach_the_state_map_only_through_core(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = (
        "get",
        "list_live",
        "write",
        "_received_entries",
        "_merge",
        "_answer",
        "on_peer_status",
    )
    tasks = record(monkeypatch, StateReplica, names)
    a, b = await active_pair(mesh)
    with trio.fail_after(WAIT):
        await a.call("state_set", network=NET, key="k", value=1)
        await b.wait_event("state_changed", key="k")
        assert (await b.call("state_get", network=NET, key="k"))["value"] == 1
        assert len((await b.call("state_list", network=NET))["entries"]) == 1
    assert tasks.only_core(), tasks.seen
