"""What the event stream tells of a lost daemon: each connection that got the desired state
back is announced once, after the replay, and each announced one's loss is told."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from meshactors.client import MeshClient
from tests.client.fakedaemon import fake_daemon

WAIT = 10  # seconds any awaited step may take before the test fails


async def test_a_replay_cut_short_is_not_announced_as_a_reconnect(tmp_path: Path) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        first = await daemon.next_session()
        with client.events() as events, trio.fail_after(WAIT):
            async with client.subscribe("lan", "news"):
                daemon.hang_up_on.add("channel_subscribe")  # a daemon stopping mid-replay
                await first.hang_up()
                await (await daemon.next_session()).wait_op("channel_subscribe")
                daemon.hang_up_on.clear()
                third = await daemon.next_session()
                await client.status()  # answered once a connection carries the state again
                await third.send({"kind": "test_marker"})
                told: list[dict[str, Any]] = []
                async for event in events:
                    if event["kind"] == "test_marker":
                        break
                    if event["kind"].startswith("client_"):
                        told.append(event)
    assert [(event["kind"], event.get("count")) for event in told] == [
        ("client_disconnected", None),
        ("client_reconnected", 1),
    ]
