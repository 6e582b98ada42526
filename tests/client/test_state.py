"""`MeshClient.state`: a local dict of a network's shared state, listed at once and kept in
sync from `state_changed` events, through a crash of the network's core and a restart of
the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.client import ClientError, MeshClient, SharedState
from meshactors.client.mesh import RELIST_RETRY_FIRST
from tests.client.conftest import LocalDaemon
from tests.client.fakedaemon import fake_session

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
CORE = "daemon/networks/network lan/core"
WAIT = 10
SLOW_CALL_TIMEOUT = 3  # seconds: the client's call deadline where the daemon answers late


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


def listed(key: str, value: object) -> dict[str, object]:
    """An entry of lan's `state_list`, as the daemon answers it."""
    return {"key": key, "value": value, "version": "1.0", "by": "a"}


def changed(key: str, value: object, version: str) -> dict[str, object]:
    """A `state_changed` event of lan, as the daemon sends it."""
    return {
        "kind": "state_changed",
        "network": "lan",
        "key": key,
        "value": value,
        "version": version,
        "by": "a",
    }


async def test_a_relist_cut_by_a_lost_daemon_waits_for_the_next_reconnect(tmp_path: Path) -> None:
    """The daemon goes away while the block lists the map again (after a lag, then after the
    reconnect): the block goes on, and the next reconnect lists the map and follows it."""
    async with fake_session(tmp_path) as (daemon, client, first), client.state("lan") as shared:
        with trio.fail_after(WAIT):
            daemon.hang_up_on.add("state_list")
            await first.send({"kind": "lagged", "skipped": 3})  # lists again: cut
            await (await daemon.next_session()).wait_op("state_list")  # cut again
            daemon.hang_up_on.clear()
            third = await daemon.next_session()
            await third.wait_op("state_list")
            await third.send(changed("k", 1, "1.0"))
            await shared.wait_until(lambda values: values.get("k") == 1)


async def test_events_the_daemon_dropped_list_the_map_again(tmp_path: Path) -> None:
    """The daemon tells of events it dropped unnumbered (`events_dropped`): a change among
    them never comes, so the block lists the map again and has the value."""
    async with fake_session(tmp_path) as (daemon, client, session):
        async with client.state("lan") as shared:
            with trio.fail_after(WAIT):
                daemon.answers["state_list"] = {"entries": [listed("k", 1)], "next_cursor": None}
                await session.send({"kind": "events_dropped", "count": 2, "event_id": 7})
                await shared.wait_until(lambda values: values.get("k") == 1)
        assert session.ops.count("state_list") == 2


async def test_a_channel_pumps_lagged_lists_nothing_again(tmp_path: Path) -> None:
    """A pump's `lagged` names the channel whose messages it dropped: no state change was
    among them, so the map is not listed again."""
    pump_lagged = {"kind": "lagged", "network": "lan", "channel": "news", "skipped": 3}
    async with fake_session(tmp_path) as (_, client, session), client.state("lan") as shared:
        with trio.fail_after(WAIT):
            await session.send_together([pump_lagged, changed("k", 1, "1.0")])
            await shared.wait_until(lambda values: values.get("k") == 1)  # both followed
        assert session.ops.count("state_list") == 1  # the block's own first listing


async def test_a_relist_refused_ends_the_block_with_its_error_unwrapped(tmp_path: Path) -> None:
    async with fake_session(tmp_path) as (daemon, client, session):
        with trio.fail_after(WAIT), pytest.raises(ClientError) as ended:
            async with client.state("lan") as shared:
                daemon.refused["state_list"] = "no_such_network"  # the network was removed
                await session.send({"kind": "lagged", "skipped": 3})
                await shared.wait_until(lambda values: False)
        assert ended.value.code == "no_such_network"
        daemon.refused.clear()
        with pytest.raises(KeyError):  # the block's own error, unwrapped too
            async with client.state("lan"):
                raise KeyError("the block's")


async def test_a_relist_past_its_deadline_is_tried_again_without_a_reconnect(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The daemon, alive but slow, answers a re-list after the client's deadline: no reconnect
    comes to list the map again, so the block tries again (after RELIST_RETRY_FIRST) on the
    same connection, and the map is listed."""
    async with fake_session(tmp_path, call_timeout=SLOW_CALL_TIMEOUT) as (daemon, client, session):
        async with client.state("lan") as shared:
            with trio.fail_after(WAIT):
                daemon.never_answered.add("state_list")  # late: after the client gave up
                await session.send({"kind": "lagged", "skipped": 3})  # lists again
                await session.wait_op("state_list", times=2)
                started = trio.current_time()
                daemon.never_answered.clear()  # prompt from now on
                daemon.answers["state_list"] = {"entries": [listed("k", 1)], "next_cursor": None}
                await shared.wait_until(lambda values: values.get("k") == 1)
        assert session.ops.count("state_list") == 3  # on the first connection: no reconnect
        waited = trio.current_time() - started
        assert waited == pytest.approx(SLOW_CALL_TIMEOUT + RELIST_RETRY_FIRST, abs=0.01)
