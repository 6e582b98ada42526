"""The network's state has one owner: the rpc code ops reach (claims, calls, answers,
cancels, a closed connection's release) runs in the `core` actor's task, never in the
connection's."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from meshactors.actors import current_node
from meshactors.network.core import NetworkCore
from meshactors.network.rpc import Rpc
from tests.network.appclient import AppClient
from tests.network.conftest import NET, Mesh, active_pair

WAIT = 10.0
WATCHED = ("register", "unregister", "call", "respond", "cancel", "client_gone")


def running_actor() -> str:
    """The kind of the actor whose task runs now ("core", "client", ...)."""
    return current_node().kind


@attrs.define
class RpcTasks:
    """For each watched Rpc method, the kinds of the tasks it ran in; `released` is set once
    a closed connection was released."""

    seen: dict[str, set[str]] = attrs.field(factory=lambda: {name: set() for name in WATCHED})
    released: trio.Event = attrs.field(factory=trio.Event)


@pytest.fixture
def tasks_of_rpc(monkeypatch: pytest.MonkeyPatch) -> RpcTasks:
    """Records, for each watched Rpc method, the tasks it runs in."""
    record = RpcTasks()

    def recorded(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            record.seen[name].add(running_actor())
            if name == "client_gone":
                record.released.set()
            return method(*args, **kwargs)

        return wrapper

    for name in WATCHED:
        monkeypatch.setattr(Rpc, name, recorded(name, getattr(Rpc, name)))
    return record


async def test_ops_reach_rpc_only_through_core(
    mesh: Mesh, nursery: trio.Nursery, tasks_of_rpc: RpcTasks
) -> None:
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
        streamed = await caller.call(
            "rpc_call_stream", network=NET, peer=b.device_id, method="echo", payload=2
        )
        await caller.call("rpc_cancel", request_id=streamed["request_id"])
        await server.call("rpc_unregister", network=NET, method="echo")
        await server.aclose()
        await tasks_of_rpc.released.wait()  # the close's cleanup asks core
    expected = {name: {NetworkCore.kind} for name in WATCHED}
    assert tasks_of_rpc.seen == expected
