"""Our capabilities and profile as peers see them: changes made at once, pipelined on one
connection, leave every peer with the ones saved (what profile_get answers), not with
whichever advert happened to be sent last."""

from __future__ import annotations

import functools

from meshactors.store import networks as network_db
from tests.network.conftest import NET, Mesh, active_pair

ROUNDS = 5
AT_ONCE = 20  # changes of each kind in flight together


async def test_changes_made_at_once_leave_peers_with_the_saved_ones(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    for round_ in range(ROUNDS):
        sent: set[int] = set()
        for n in range(AT_ONCE):
            tags = {"tags": [f"t{round_}-{n}"]}
            sent.add(await a.client.send("capabilities_set", network=NET, capabilities=tags))
            sent.add(await a.client.send("profile_set", network=NET, display_name=f"n{round_}-{n}"))
        while sent:
            frame = await a.client.frame()
            if frame.get("id") in sent:
                assert frame["ok"], frame
                sent.discard(frame["id"])
        # Frames from a to b arrive in order: once b has this write, it has every advert a
        # sent while answering the changes above.
        marker = f"marker/{round_}"
        await a.call("state_set", network=NET, key=marker, value=round_)
        await b.wait_event("state_changed", key=marker)
        profile = (await a.call("profile_get", network=NET))["profile"]
        read = functools.partial(network_db.get_settings, network=NET)
        saved = await a.services.store.call(read, what="read settings")
        seen = await b.peer(a)
        assert seen is not None
        assert seen["profile"]["display_name"] == profile["display_name"]
        assert seen["capabilities"]["tags"] == saved["capabilities"]["tags"]
