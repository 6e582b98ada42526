"""A network whose actors keep crashing, past its own restart intensity and past the one its
parent would allow, is restarted alone: the daemon's other networks, the control plane and
connected clients never notice."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshactors.actors import RestartLimits
from meshactors.network.core import CoreMessage, NetworkCore
from meshactors.network.network import Network
from tests.network.appclient import AppClient
from tests.network.conftest import WAIT, Mesh, approve_both

FAST = RestartLimits(backoff_initial=0.001, backoff_max=0.001)  # the same intensity, no waiting
STARTS = 8  # starts of the doomed network to wait for: past `networks`' intensity of 5


async def test_a_network_crashing_for_good_leaves_the_other_network_and_clients_alone(
    mesh: Mesh, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url, "fine")
    await b.join(mesh.url, "fine")
    await approve_both(a, b, "fine")
    client = await AppClient.open(b.services.paths.socket, nursery)
    before = await client.call("status")

    starts: list[float] = []
    started_often = trio.Event()
    start, handle = Network.run, NetworkCore.handle

    async def counted_start(self: Network, **kwargs: Any) -> None:
        if self.config.id == "doomed":
            starts.append(trio.current_time())
            if len(starts) == STARTS:
                started_often.set()
        await start(self, **kwargs)

    async def crash_on_a_message(self: NetworkCore, message: CoreMessage) -> None:
        if self.peers.network != "doomed":
            return await handle(self, message)
        raise RuntimeError("injected: the doomed network's core crashes on what the link says")

    monkeypatch.setattr(Network, "run", counted_start)
    monkeypatch.setattr(NetworkCore, "handle", crash_on_a_message)
    b.services.networks.limits = FAST
    await b.join(mesh.url, "doomed")
    b.network("doomed").limits = FAST
    with trio.fail_after(WAIT):
        await started_often.wait()

    after = await client.call("status")
    assert after["client_id"] == before["client_id"]
    shown = {network["id"]: network for network in after["networks"]}
    assert shown["doomed"]["link"] == "unknown"  # its core never answers: status still does
    assert shown["fine"]["link"] == "up"
    tree = b.services.tree
    assert tree.children["networks"].restarts == 0
    assert tree.children["control"].restarts == 0
    assert tree.children["networks"].children["network doomed"].restarts >= STARTS - 1
    assert [path for path in b.crashes() if "network doomed" not in path] == []
    seen = await b.peer(a, "fine")
    assert seen is not None and seen["status"] == "active"
    listed = await client.call("peers_list", network="fine")
    assert [peer["device_id"] for peer in listed["peers"]] == [a.device_id]
