"""Writes of one thing pipelined on one connection land in the order sent, so the last one sent
is what is kept: a shared key's sets and deletes, a network's capabilities, the profile."""

from __future__ import annotations

import functools
from typing import Any

from meshactors.daemon.services import Services
from meshactors.network.peers import CAPABILITIES_KEY
from meshactors.store import networks as network_db
from tests.network.conftest import NET
from tests.ops.test_claim_order import Connect, pipelined
from tests.ops.test_connection_close import join, ok
from tests.support import LineClient

WRITES = 40  # pipelined runs of each write; each could end on another than the last sent


async def _value(app: LineClient, key: dict[str, Any]) -> Any:
    """The key's value, or None once deleted (`state_get` answers not_found)."""
    answer = await app.call("state_get", **key)
    if not answer["ok"]:
        assert answer["error"]["code"] == "not_found", answer
        return None
    return answer["data"]["value"]


async def test_pipelined_sets_and_deletes_of_a_key_keep_the_last_one_sent(
    daemon: Services, connect: Connect
) -> None:
    app = await connect()
    await join(app, NET)
    key = {"network": NET, "key": "k"}
    for n in range(WRITES):
        await pipelined(app, ("state_set", key | {"value": n}), ("state_delete", key))
        assert await _value(app, key) is None, n
        await pipelined(app, ("state_delete", key), ("state_set", key | {"value": n}))
        assert await _value(app, key) == n


async def test_pipelined_profile_and_capabilities_sets_keep_the_last_one_sent(
    daemon: Services, connect: Connect
) -> None:
    app = await connect()
    await join(app, NET)
    for n in range(WRITES):
        sets = [("profile_set", {"network": NET, "summary": f"s{n}-{k}"}) for k in range(3)]
        await pipelined(app, *sets)
        profile = (await ok(app, "profile_get", network=NET))["profile"]
        assert profile["summary"] == f"s{n}-2"
        adverts = [
            ("capabilities_set", {"network": NET, "capabilities": {"tags": [f"t{n}-{k}"]}})
            for k in range(3)
        ]
        await pipelined(app, *adverts)
        read = functools.partial(network_db.get_setting, network=NET, key=CAPABILITIES_KEY)
        saved = await daemon.store.call(read, what="read capabilities")
        assert saved["tags"] == [f"t{n}-2"]
