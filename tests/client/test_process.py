"""The library against real daemon processes started from the CLI: connecting while the daemon
starts, and a daemon restart that the client rides out by itself (events resumed, methods
re-claimed, channels re-subscribed)."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from meshactors.client import (
    ChannelGap,
    ChannelMessage,
    ClientError,
    MeshClient,
    RequestContext,
    SyncMeshClient,
)
from meshactors.daemon.main import build_ops
from tests.client.test_client import append_events, next_kind, take_kinds
from tests.support import Home

pytestmark = pytest.mark.e2e

DAEMON_OPS = set(build_ops().names())  # what `version.ops` reports
NETWORK = {"id": "lan", "label": "lan", "brokers": ["ws://127.0.0.1:9/"], "auto_approve": False}


def needs(*ops: str) -> pytest.MarkDecorator:
    """Skip until the daemon answers `ops` (they are being added on other branches)."""
    missing = sorted(set(ops) - DAEMON_OPS)
    return pytest.mark.skipif(bool(missing), reason=f"the daemon lacks {', '.join(missing)} yet")


async def cli(home: Home, *args: str) -> None:
    await trio.to_thread.run_sync(functools.partial(home.cli, *args))


async def restart(home: Home) -> None:
    await cli(home, "daemon", "down")
    await cli(home, "daemon", "up", "--detach")


def response(answer: Any) -> Any:
    """An rpc_call answer's payload (the data itself or its `payload` field)."""
    return answer.get("payload", answer) if isinstance(answer, dict) else answer


async def test_client_started_before_the_daemon_connects_when_it_is_up(home: Home) -> None:
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            statuses: list[Any] = []

            async def client_first() -> None:
                async with MeshClient(home.socket, connect_timeout=30) as client:
                    statuses.append(await client.status())

            nursery.start_soon(client_first)
            await trio.testing.wait_all_tasks_blocked()
            assert not statuses
            await cli(home, "daemon", "up", "--detach")
    assert statuses[0]["socket"] == str(home.socket)


async def test_events_resume_across_a_daemon_process_restart(home: Home) -> None:
    await cli(home, "daemon", "up", "--detach")
    async with MeshClient(home.socket) as client:
        stream = client.events()
        with trio.fail_after(40):
            await cli(home, "daemon", "down")
            await next_kind(stream, "client_disconnected")
            missed = await trio.to_thread.run_sync(
                functools.partial(append_events, home.path / "state.db", 3)
            )
            await cli(home, "daemon", "up", "--detach")
            taken = await take_kinds(stream, {"test_event": 3, "client_reconnected": 1})
            replayed = [event["event_id"] for event in taken if event["kind"] == "test_event"]
        assert replayed == missed
        assert client.last_event_id == missed[-1]


def sync_script(home: Home) -> tuple[Any, Any, Any]:
    with SyncMeshClient(home.socket) as client:
        status = client.call("status", {}, timeout=10)
        synced = client.ensure_networks([NETWORK], purge_removed=True)
        return status, client.run(client.client.version), synced


async def test_sync_facade_for_scripts(home: Home) -> None:
    await cli(home, "daemon", "up", "--detach")
    with trio.fail_after(30):
        status, version, synced = await trio.to_thread.run_sync(sync_script, home)
    assert status["socket"] == str(home.socket)
    assert "status" in version["ops"]
    assert synced.added == ("lan",)


@needs("network_add", "networks_list", "network_remove", "network_update")
async def test_ensure_networks_converges_idempotently(home: Home) -> None:
    await cli(home, "daemon", "up", "--detach")
    other = NETWORK | {"id": "other"}
    async with MeshClient(home.socket) as client:
        first = await client.ensure_networks([NETWORK, other])
        assert sorted(first.added) == ["lan", "other"]
        again = await client.ensure_networks([NETWORK, other])
        assert again.added == again.removed == again.updated == ()
        relabelled = await client.ensure_networks([NETWORK | {"label": "home"}])
        assert relabelled.updated == ("lan",)
        assert relabelled.removed == ("other",)
        async with trio.open_nursery() as nursery:  # concurrent calls never double an add
            for _ in range(3):
                nursery.start_soon(client.ensure_networks, [NETWORK])
        listed = await client.networks_list()
        entries = listed.get("networks", listed) if isinstance(listed, dict) else listed
        assert [entry.get("config", entry)["id"] for entry in entries] == ["lan"]


@needs("network_add", "rpc_register", "rpc_call", "rpc_call_stream", "rpc_respond")
async def test_served_methods_are_reclaimed_after_a_daemon_restart(home: Home) -> None:
    await cli(home, "daemon", "up", "--detach")

    async def echo(payload: Any, ctx: RequestContext) -> Any:
        return {"echo": payload, "from": ctx.peer}

    async def count(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        for n in range(payload):
            yield n

    async def broken(payload: Any, ctx: RequestContext) -> Any:
        raise ValueError("no such thing")

    async with MeshClient(home.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.serve("lan", "echo", echo)
        await client.serve("lan", "count", count)
        await client.serve("lan", "broken", broken)
        stream = client.events()
        with trio.fail_after(60):
            assert response(await client.rpc_call("lan", me, "echo", 1)) == {"echo": 1, "from": me}
            await restart(home)
            await next_kind(stream, "client_reconnected")
            assert response(await client.rpc_call("lan", me, "echo", 2)) == {"echo": 2, "from": me}
            async with client.rpc_call_stream("lan", me, "count", 5) as chunks:
                assert [chunk async for chunk in chunks] == list(range(5))
            with pytest.raises(ClientError) as failure:
                await client.rpc_call("lan", me, "broken", None)
            assert failure.value.code == "remote_error"
            assert "no such thing" in failure.value.message


@needs("network_add", "channel_subscribe", "channel_send_to")
async def test_channels_are_resubscribed_after_a_daemon_restart(home: Home) -> None:
    await cli(home, "daemon", "up", "--detach")
    async with MeshClient(home.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(60):
                await client.channel_send_to("lan", "news", me, "before")
                first = await news.__anext__()
                assert first == ChannelMessage("lan", me, "news", "before")
                await restart(home)
                await next_kind(stream, "client_reconnected")  # the re-subscribe is done
                await client.channel_send_to("lan", "news", me, "after")
                assert await news.__anext__() == ChannelGap("disconnected")
                second = await news.__anext__()
                assert isinstance(second, ChannelMessage)
                assert second.payload == "after"


RAISING_HANDLER = """
import sys, trio
from meshactors.client import ClientError, MeshClient

async def boom(payload, ctx):
    raise ValueError("boom")

async def main():
    async with MeshClient(sys.argv[1]) as client:
        me = (await client.status())["device_id"]
        await client.serve("lan", "boom", boom)
        try:
            await client.rpc_call("lan", me, "boom")
        except ClientError as exc:
            sys.stderr.write(f"caller got {exc.code}\\n")

trio.run(main)
"""


async def test_a_raising_handler_logs_through_logging_never_to_stdout(home: Home) -> None:
    await cli(home, "daemon", "up", "--detach")
    await cli(home, "network", "add", "lan", "--broker", "ws://127.0.0.1:9/v1")
    script = functools.partial(
        subprocess.run,
        [sys.executable, "-c", RAISING_HANDLER, str(home.socket)],
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    with trio.fail_after(60):
        done = await trio.to_thread.run_sync(script)
    assert done.stdout == ""
    assert "boom on lan failed: boom" in done.stderr  # logging's last-resort handler: stderr
    assert "caller got remote_error" in done.stderr
