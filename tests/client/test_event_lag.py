"""An `events()` reader's `lagged` count says how many events it missed, also when a full
buffer (the connection's or its own) dropped the daemon's `lagged` notice with the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.client import MeshClient, _conn, mesh
from tests.client.fakedaemon import fake_daemon

WAIT = 10  # seconds any awaited step may take before the test fails
SMALL_BUFFER = 2  # events a buffer holds here, so two fill it
DAEMON_SKIPPED = 5544  # what the daemon's own notice says it skipped


def tick(n: int) -> dict[str, Any]:
    """An event frame the client passes on as it is."""
    return {"kind": "test_tick", "n": n}


@pytest.mark.parametrize("full", ["connection", "reader"])
async def test_a_dropped_lagged_notice_keeps_its_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: str
) -> None:
    """Two ticks fill the buffer; the daemon's notice and a third tick are dropped: the reader
    gets the two ticks, then `lagged` with the notice's count and one each for the tick and
    the marker after it."""
    buffers = {"connection": (_conn, "EVENT_BUFFER"), "reader": (mesh, "EVENT_STREAM_BUFFER")}
    module, name = buffers[full]
    monkeypatch.setattr(module, name, SMALL_BUFFER)
    frames = [tick(1), tick(2), {"kind": "lagged", "skipped": DAEMON_SKIPPED}, tick(3)]
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        with trio.fail_after(WAIT), client.events() as events:
            monkeypatch.undo()  # a second reader that takes all: it tells when all was routed
            with client.events() as everything:
                await session.send_together([*frames, {"kind": "test_marker"}])
                async for event in everything:  # the last routed: the marker, or the client's
                    if event["kind"] == "test_marker" or event.get("source") == "client":
                        break  # lag notice when the connection's buffer dropped the marker too
            got = [await events.__anext__() for _ in range(3)]
    assert got[:2] == [tick(1), tick(2)]
    assert got[2] == {"kind": "lagged", "skipped": DAEMON_SKIPPED + 2, "source": "client"}
