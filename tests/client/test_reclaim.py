"""A served method whose claim a restart in the daemon ended (`handler_displaced`, `by` null) is
claimed again by the library, unless the program unserved it first; one another program took
(`by` names it) stays with that one, and the displaced program lets its handler go (binary
streams too); one the daemon refused is not kept."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import trio

from meshactors.client import BinaryStream, ClientError, MeshClient, RequestContext
from meshactors.client.reconnect import Want
from tests.client.conftest import LocalDaemon
from tests.client.test_client import next_kind
from tests.client.test_want_order import daemon_holds

NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
CORE = "daemon/networks/network lan/core"
WAIT = 10


async def echo(payload: Any, ctx: RequestContext) -> Any:
    return payload


async def test_a_claim_a_core_restart_ended_is_claimed_again(local: LocalDaemon) -> None:
    local.debug_ops = True
    await local.start()
    async with MeshClient(local.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "echo", echo)
        stream = client.events()
        with trio.fail_after(WAIT):
            await client.call("debug_crash", {"path": CORE})
            displaced = await next_kind(stream, "handler_displaced")
            assert (displaced["method"], displaced["by"]) == ("echo", None)
            reclaimed = await next_kind(stream, "client_reclaimed")
            assert reclaimed == {"kind": "client_reclaimed", "network": "lan", "method": "echo"}
            assert (await client.rpc_call("lan", me, "echo", 7))["payload"] == 7


async def test_a_claim_unserved_before_its_reclaim_ran_stays_released(
    local: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, ended = trio.Event(), trio.Event()
    reclaim, route = MeshClient._restore, MeshClient._route
    kinds: list[str] = []

    async def late_reclaim(client: MeshClient, want: Want) -> None:
        await started.wait()  # the reclaim's task first runs only after the program's unserve
        await reclaim(client, want)
        ended.set()

    def recording_route(client: MeshClient, item: Any) -> None:
        if isinstance(item, dict):
            kinds.append(item.get("kind", ""))
        route(client, item)

    monkeypatch.setattr(MeshClient, "_restore", late_reclaim)
    monkeypatch.setattr(MeshClient, "_route", recording_route)
    local.debug_ops = True
    await local.start()
    async with MeshClient(local.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        await client.serve("lan", "echo", echo)
        stream = client.events()
        with trio.fail_after(WAIT):
            await client.call("debug_crash", {"path": CORE})
            assert (await next_kind(stream, "handler_displaced"))["by"] is None
            await client.unserve("lan", "echo")
            started.set()
            await ended.wait()
            claims, _ = await daemon_holds(client)
        assert claims == {}  # not claimed again with no handler behind it
        assert "client_reclaimed" not in kinds


async def test_a_claim_another_program_took_stays_taken(running: LocalDaemon) -> None:
    async with (
        MeshClient(running.paths.socket) as first,
        MeshClient(running.paths.socket) as second,
    ):
        await first.ensure_networks([NETWORK])
        await first.serve("lan", "echo", echo)
        stream = first.events()
        with trio.fail_after(WAIT):
            await second.serve("lan", "echo", echo)
            displaced = await next_kind(stream, "handler_displaced")
            assert displaced["by"] == (await second.status())["client_id"]
            await first.status()  # any re-claim would have been sent before this answer
        tree = await second.call("inspect")
        networks = next(c for c in tree["children"] if c["name"] == "networks")
        core = networks["children"][0]["children"][0]
        second_id = (await second.status())["client_id"]
        assert core["figures"]["rpc"]["claims"] == {"echo": second_id}


async def test_a_claim_on_a_removed_network_is_dropped_and_told(running: LocalDaemon) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        await client.serve("lan", "echo", echo)
        stream = client.events()
        with trio.fail_after(WAIT):
            await client.call("network_remove", {"network": "lan"})
            assert (await next_kind(stream, "handler_displaced"))["by"] is None
            failed = await next_kind(stream, "client_replay_failed")
            assert (failed["method"], failed["code"]) == ("echo", "no_such_network")


async def test_a_binary_claim_another_program_took_lets_the_handler_go(
    running: LocalDaemon,
) -> None:
    async def first_handler(stream: BinaryStream) -> None:
        await stream.send_eof()

    held = weakref.ref(first_handler)
    async with (
        MeshClient(running.paths.socket) as first,
        MeshClient(running.paths.socket) as second,
    ):
        await first.ensure_networks([NETWORK])
        me = (await first.status())["device_id"]
        await first.serve_stream("lan", "files", first_handler)
        del first_handler  # from here only the client could keep it
        stream = first.events()
        with trio.fail_after(WAIT):
            await second.serve_stream("lan", "files", second_handler)
            displaced = await next_kind(stream, "handler_displaced")
            assert displaced["by"] == (await second.status())["client_id"]
            await second.unserve("lan", "files")
            with pytest.raises(ClientError) as refused:  # nobody serves it: not the first again
                await first.open_stream("lan", me, "files")
            assert refused.value.code == "no_handler"
        gc.collect()
        assert held() is None  # the displaced program forgot its handler


async def second_handler(stream: BinaryStream) -> None:
    await stream.send_eof()


async def test_a_binary_claim_the_daemon_refused_is_not_kept(running: LocalDaemon) -> None:
    async def handler(stream: BinaryStream) -> None:
        await stream.send_eof()

    held = weakref.ref(handler)
    async with MeshClient(running.paths.socket) as client:
        with pytest.raises(ClientError) as refused:  # not joined to "lan" yet
            await client.serve_stream("lan", "files", handler)
        assert refused.value.code == "no_such_network"
        del handler, refused  # its traceback holds serve_stream's frame, and that the handler
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        with pytest.raises(ClientError) as unserved, trio.fail_after(WAIT):
            await client.open_stream("lan", me, "files")
        assert unserved.value.code == "no_handler"
        gc.collect()
        assert held() is None  # neither the handler nor its claim outlived the refusal
