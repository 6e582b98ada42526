"""A closed connection releases its claims and subscriptions in every network it used, whatever
happened to each network meanwhile (removed, joined again, a core that does not answer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from meshactors.daemon.services import Services
from tests.network.appclient import network_children
from tests.network.conftest import NET, UNREACHABLE, WAIT
from tests.support import LineClient

Connect = Callable[[], Awaitable[LineClient]]

OTHER = "net2"


async def ok(client: LineClient, op: str, **params: Any) -> dict[str, Any]:
    """Run an op that must succeed and return its data."""
    answer = await client.call(op, **params)
    assert answer["ok"], answer
    data: dict[str, Any] = answer["data"]
    return data


async def join(admin: LineClient, network_id: str) -> None:
    await ok(admin, "network_add", config={"id": network_id, "brokers": [UNREACHABLE]})


async def close(app: LineClient) -> None:
    """End the connection from the program's side and wait until the daemon closed its side,
    which it does once the connection's cleanups have run (or ran out of time)."""
    await app.stream.send_eof()
    with trio.fail_after(WAIT):
        while True:
            try:
                await app.frame()  # e.g. handler_displaced when a network was removed
            except EOFError:
                return


async def held(admin: LineClient, network_id: str) -> tuple[dict[str, Any], list[str]]:
    """A network's method claims and channel pumps, as `inspect` shows them."""
    children = network_children(await ok(admin, "inspect"), network_id)
    pumps = [name for name in children if name.startswith("channel ")]
    return children["core"]["figures"]["rpc"]["claims"], pumps


async def test_a_network_joined_again_has_the_connections_claims_released_on_close(
    daemon: Services, connect: Connect
) -> None:
    admin, app = await connect(), await connect()
    await join(admin, NET)
    await ok(app, "rpc_register", network=NET, method="m")
    await ok(admin, "network_remove", network=NET)
    await join(admin, NET)
    await ok(app, "rpc_register", network=NET, method="m")
    await ok(app, "channel_subscribe", network=NET, channel="news")
    await close(app)
    assert await held(admin, NET) == ({}, [])
    own = daemon.identity.device_id
    answer = await admin.call("rpc_call", network=NET, peer=own, method="m", timeout_ms=10_000)
    assert answer["error"]["code"] == "no_handler"


async def remove_it(daemon: Services, admin: LineClient) -> None:
    await ok(admin, "network_remove", network=NET)


async def stop_its_core(daemon: Services, admin: LineClient) -> None:
    """Leave NET's core inbox open with nobody reading it: a cleanup that asks it hangs."""
    await daemon.networks.get(NET).stop_child("core")


@pytest.mark.parametrize("lose", [remove_it, stop_its_core], ids=["removed", "core_stuck"])
async def test_a_network_removed_or_stuck_does_not_keep_the_others_claims_from_release(
    daemon: Services,
    connect: Connect,
    lose: Callable[[Services, LineClient], Awaitable[None]],
) -> None:
    admin, app = await connect(), await connect()
    await join(admin, OTHER)
    await join(admin, NET)
    await ok(app, "rpc_register", network=OTHER, method="m")
    await ok(app, "channel_subscribe", network=OTHER, channel="news")
    await ok(app, "rpc_register", network=NET, method="m")  # last: its cleanup is the newest
    await lose(daemon, admin)
    await close(app)
    assert await held(admin, OTHER) == ({}, [])
