"""A claim the library restores (replayed after a reconnect, or claimed again after a restart
in the daemon ended it) displaces no one: a program that claimed the method meanwhile is newer
and keeps it (last claim wins), and the restoring client drops its claim and tells the program
`client_replay_failed` with `conflict`. The op under it: `rpc_register` with `if_unclaimed`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.client import ClientError, MeshClient, RequestContext, reconnect
from meshactors.client._conn import Connection
from meshactors.client.reconnect import Want
from tests.client.conftest import NETWORK, LocalDaemon
from tests.client.test_client import next_kind
from tests.client.test_want_order import daemon_holds

CORE_OF_LAN = "daemon/networks/network lan/core"
RESTORE_WAIT = 20


async def older(payload: Any, ctx: RequestContext) -> Any:
    return "older"


async def newer(payload: Any, ctx: RequestContext) -> Any:
    return "newer"


async def test_a_register_if_unclaimed_is_refused_while_another_connection_holds_it(
    running: LocalDaemon,
) -> None:
    async with MeshClient(running.paths.socket) as holder, MeshClient(running.paths.socket) as late:
        await holder.ensure_networks([NETWORK])
        await holder.serve("lan", "m", older)
        holder_id = (await holder.status())["client_id"]
        with pytest.raises(ClientError) as refused:
            await late.call("rpc_register", {"network": "lan", "method": "m", "if_unclaimed": True})
        assert refused.value.code == "conflict"
        assert refused.value.details == {"holder": holder_id}
        assert holder_id in refused.value.message
        free = {"network": "lan", "method": "free", "if_unclaimed": True}
        assert (await late.call("rpc_register", free))["displaced"] is None
        own = {"network": "lan", "method": "m", "if_unclaimed": True}
        assert (await holder.call("rpc_register", own))["displaced"] is None  # its own already
        with pytest.raises(ClientError) as invalid:
            await late.call("rpc_register", {"network": "lan", "method": "x", "if_unclaimed": 1})
        assert invalid.value.code == "invalid_params"
        claims, _ = await daemon_holds(holder)
        assert claims["m"] == holder_id


async def test_a_replay_after_a_restart_leaves_a_newer_claim_alone(
    local: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon restarts; another program claims the method on it before the older client
    reconnects; the older one's replay must not take it back."""
    held = trio.Event()
    may_reconnect = trio.Event()
    connect = reconnect.open_connection

    @asynccontextmanager
    async def held_reconnect(path: Path, timeout: float) -> AsyncIterator[Connection]:
        if not held.is_set():  # the older client's reconnect waits for the newer claim
            held.set()
            await may_reconnect.wait()
        async with connect(path, timeout) as conn:
            yield conn

    await local.start()
    async with MeshClient(local.paths.socket) as old_client:
        await old_client.ensure_networks([NETWORK])
        me = (await old_client.status())["device_id"]
        await old_client.serve("lan", "m", older)
        stream = old_client.events()
        with trio.fail_after(RESTORE_WAIT):
            monkeypatch.setattr(reconnect, "open_connection", held_reconnect)
            await local.stop()
            await held.wait()
            await local.start()
            async with MeshClient(local.paths.socket) as new_client:
                await new_client.serve("lan", "m", newer)
                new_id = (await new_client.status())["client_id"]
                may_reconnect.set()
                failed = await next_kind(stream, "client_replay_failed")
                await next_kind(stream, "client_reconnected")
                assert (failed["op"], failed["method"], failed["code"]) == (
                    "rpc_register",
                    "m",
                    "conflict",
                )
                assert new_id in failed["message"]
                assert (await old_client.rpc_call("lan", me, "m"))["payload"] == "newer"
                claims, _ = await daemon_holds(old_client)
                assert claims["m"] == new_id
        assert Want(reconnect.WantKind.CLAIM, "lan", "m") not in old_client._link.desired.claims


async def test_a_reclaim_after_a_core_restart_leaves_a_newer_claim_alone(
    local: LocalDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart of the network's core ends every claim (`handler_displaced`, `by` null);
    another program claims the method before the client's reclaim runs: it keeps it."""
    may_reclaim = trio.Event()
    reclaim = MeshClient._restore

    async def late_reclaim(client: MeshClient, want: Want) -> None:
        await may_reclaim.wait()
        await reclaim(client, want)

    monkeypatch.setattr(MeshClient, "_restore", late_reclaim)
    local.debug_ops = True
    await local.start()
    async with (
        MeshClient(local.paths.socket) as old_client,
        MeshClient(local.paths.socket) as new_client,
    ):
        await old_client.ensure_networks([NETWORK])
        me = (await old_client.status())["device_id"]
        await old_client.serve("lan", "m", older)
        stream = old_client.events()
        with trio.fail_after(RESTORE_WAIT):
            await old_client.call("debug_crash", {"path": CORE_OF_LAN})
            assert (await next_kind(stream, "handler_displaced"))["by"] is None
            await new_client.serve("lan", "m", newer)
            may_reclaim.set()
            failed = await next_kind(stream, "client_replay_failed")
            assert (failed["method"], failed["code"]) == ("m", "conflict")
            assert (await old_client.rpc_call("lan", me, "m"))["payload"] == "newer"
