"""A crash of the `outbox` actor restarts it alone: connected clients keep their connection."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.daemon.outbox import Outbox
from tests.daemon_tree import serving
from tests.support import LineClient

WAIT = 10.0  # seconds for the crash, the restart and the answers


async def test_an_outbox_crash_leaves_connected_clients_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_drain = Outbox._drain
    runs: list[int] = []
    restarted = trio.Event()

    async def crash_once_poked(self: Outbox, nursery: trio.Nursery) -> None:
        runs.append(1)
        if len(runs) == 1:
            await self._doorbell.wait()
            raise RuntimeError("injected outbox failure")
        restarted.set()
        await original_drain(self, nursery)

    monkeypatch.setattr(Outbox, "_drain", crash_once_poked)
    async with serving(tmp_path) as services:
        client = LineClient(await trio.open_unix_socket(str(services.paths.socket)))
        with trio.fail_after(WAIT):
            before = await client.call("status")
            services.outbox.poke()
            await restarted.wait()
            after = await client.call("status")
        assert after["ok"] and after["data"]["client_id"] == before["data"]["client_id"]
        assert services.tree.children["outbox"].restarts == 1
        assert services.tree.children["control"].restarts == 0
        await client.aclose()
