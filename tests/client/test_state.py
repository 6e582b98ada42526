"""`MeshClient.state`: a local dict of a network's shared state, listed at once and kept in
sync from `state_changed` events, through a crash of the network's core and a restart of
the daemon."""

from __future__ import annotations

import trio

from meshactors.client import MeshClient, SharedState
from tests.client.conftest import LocalDaemon

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
CORE = "daemon/networks/network lan/core"
WAIT = 10


async def test_the_local_copy_follows_writes_deletes_and_restarts(local: LocalDaemon) -> None:
    local.debug_ops = True
    await local.start()
    async with MeshClient(local.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        await client.state_set("lan", "before", {"n": 1})
        async with client.state("lan") as shared:
            assert shared.values == {"before": {"n": 1}}
            with trio.fail_after(WAIT):
                await client.state_set("lan", "after", [1, 2])
                await shared.wait_until(lambda values: values.get("after") == [1, 2])
                await client.state_delete("lan", "before")
                await shared.wait_until(lambda values: "before" not in values)
                await client.call("debug_crash", {"path": CORE})
                await client.state_set("lan", "crash", True)  # core is back, the map with it
                await shared.wait_until(lambda values: "crash" in values)
            assert shared.values == {"after": [1, 2], "crash": True}
            await local.stop()
            await local.start()
            with trio.fail_after(WAIT):
                await client.state_set("lan", "restart", "yes")
                await shared.wait_until(lambda values: "restart" in values)
            assert shared.values == {"after": [1, 2], "crash": True, "restart": "yes"}
            assert (await client.state_list("lan", prefix="re"))["entries"][0]["value"] == "yes"


async def test_listing_again_drops_keys_deleted_while_nobody_listened(local: LocalDaemon) -> None:
    await local.start()
    async with MeshClient(local.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        await client.state_set("lan", "kept", 1)
        await client.state_set("lan", "gone", 2)
        shared = SharedState("lan")
        await shared.load(client)
        assert shared.values == {"kept": 1, "gone": 2}
        await client.state_delete("lan", "gone")  # its event never applied, as in a lag
        await shared.load(client)
        assert shared.values == {"kept": 1}
        old = {"key": "gone", "value": 2, "deleted": False, "version": "0.0", "by": "a"}
        assert not shared.apply(old)  # an older event cannot bring it back


def test_a_listed_value_and_an_event_in_either_order_leave_the_newer() -> None:
    shared = SharedState("lan")
    old = {"key": "k", "value": 1, "deleted": False, "version": "1.0", "by": "a"}
    new = {"key": "k", "value": 2, "deleted": False, "version": "2.0", "by": "a"}
    gone = {"key": "k", "value": None, "deleted": True, "version": "3.0", "by": "a"}
    assert shared.apply(new) and not shared.apply(old)
    assert shared.values == {"k": 2}
    assert shared.apply(gone) and not shared.apply(new)  # a stale listing brings nothing back
    assert shared.values == {}
