"""Closing a MeshClient ends what its other tasks wait on: calls, streamed calls, channel
readers and event readers each see the end at once, never a wait for a daemon gone quiet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.client import ClientClosed, MeshClient, RequestContext, SyncMeshClient
from tests.client.conftest import LocalDaemon

NETWORK = {"id": "lan", "label": "lan", "brokers": ["ws://127.0.0.1:9/v1"], "auto_approve": False}


async def test_closing_the_client_ends_calls_streams_and_readers_in_other_tasks(
    running: LocalDaemon,
) -> None:
    socket = running.paths.socket
    handling = trio.Event()

    async def hang(payload: Any, ctx: RequestContext) -> Any:
        handling.set()
        await trio.sleep_forever()

    async def one_then_hang(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        yield 1
        await trio.sleep_forever()

    outcomes: dict[str, str] = {}
    with trio.fail_after(20):
        async with MeshClient(socket) as server:
            await server.ensure_networks([NETWORK])
            me = (await server.status())["device_id"]
            await server.serve("lan", "hang", hang)
            await server.serve("lan", "trickle", one_then_hang)
            async with trio.open_nursery() as nursery, MeshClient(socket) as client:

                async def call() -> None:
                    with pytest.raises(ClientClosed):
                        await client.rpc_call("lan", me, "hang")
                    outcomes["call"] = "closed"

                async def stream(task_status: trio.TaskStatus[None]) -> None:
                    async with client.rpc_call_stream("lan", me, "trickle") as chunks:
                        assert await chunks.__anext__() == 1
                        task_status.started()
                        with pytest.raises(ClientClosed):
                            await chunks.__anext__()
                    outcomes["stream"] = "closed"

                async def channel(task_status: trio.TaskStatus[None]) -> None:
                    async with client.subscribe("lan", "news") as messages:
                        task_status.started()
                        async for _ in messages:
                            pass
                        outcomes["channel"] = "ended"

                async def events(task_status: trio.TaskStatus[None]) -> None:
                    with client.events() as stream:
                        task_status.started()
                        async for _ in stream:
                            pass
                        outcomes["events"] = "ended"

                nursery.start_soon(call)
                await handling.wait()
                await nursery.start(stream)
                await nursery.start(channel)
                await nursery.start(events)
    assert outcomes == {
        "call": "closed",
        "stream": "closed",
        "channel": "ended",
        "events": "ended",
    }


async def test_a_channel_joined_after_the_client_closed_is_refused(running: LocalDaemon) -> None:
    """A channel another task still holds the feed of gives no new reader once the client
    closed: one would never see its end."""
    leave = trio.Event()

    async def holder(client: MeshClient, task_status: trio.TaskStatus[None]) -> None:
        async with client.subscribe("lan", "news") as messages:
            task_status.started()
            async for _ in messages:
                pass
            await leave.wait()  # its feed stays while the late joiner comes

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            async with MeshClient(running.paths.socket) as client:
                await client.ensure_networks([NETWORK])
                await nursery.start(holder, client)
            with pytest.raises(ClientClosed):
                async with client.subscribe("lan", "news") as late:
                    async for _ in late:
                        pass
            leave.set()


async def test_a_closed_sync_client_refuses_calls_and_events(running: LocalDaemon) -> None:
    """After `close`, the blocking client's calls and a new `events()` raise ClientClosed, not
    the trio error of a thread that stopped."""

    def use_after_close() -> None:
        client = SyncMeshClient(running.paths.socket).start()
        client.close()
        with pytest.raises(ClientClosed):
            client.call("status")
        with pytest.raises(ClientClosed):
            next(client.events())

    with trio.fail_after(20):
        await trio.to_thread.run_sync(use_after_close)


def test_a_sync_client_never_started_closes_quietly(tmp_path: Path) -> None:
    """`close` before `start` has no thread to stop: it returns (not the RuntimeError of a
    join of a thread never started), and calls refuse as on any client not running."""
    client = SyncMeshClient(tmp_path / "daemon.sock")
    client.close()
    client.close()
    with pytest.raises(ClientClosed):
        client.call("status")
