"""Broker URLs and link errors through the real CLI: a URL without a path gets the broker's,
one that can never work is refused before joining, and a link that fails says why, in
`network list`, `networks_list` and one `network_link_error` event per change."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.cli.common import EXIT_USAGE
from tests.e2e.test_mesh import free_port, start_broker
from tests.support import Home, LineClient

pytestmark = pytest.mark.e2e

WAIT = 30


async def test_broker_urls_and_link_errors(home: Home, tmp_path: Path) -> None:
    port = free_port()
    broker = start_broker(Home(tmp_path / "broker"), port)
    cli = functools.partial(trio.to_thread.run_sync)
    try:
        await cli(home.cli, "daemon", "up", "--detach")
        refused = await cli(
            functools.partial(
                home.cli, "network", "add", "bad", "--broker", "http://x/v1", check=False
            )
        )
        assert refused.returncode == EXIT_USAGE and "broker URL must be ws://" in refused.stderr
        events = LineClient(await trio.open_unix_socket(str(home.socket)))
        assert (await events.call("events_subscribe"))["ok"]
        joins = {
            "fine": f"ws://127.0.0.1:{port}",
            "wrongpath": f"ws://127.0.0.1:{port}/v2",
            "nobody": f"ws://127.0.0.1:{free_port()}/v1",
            "nowhere": "ws://no-such-broker.invalid/v1",
        }
        for network, url in joins.items():
            await cli(home.cli, "network", "add", network, "--broker", url)
        seen: list[dict[str, Any]] = []
        with trio.fail_after(WAIT):
            while {e["network"] for e in seen} != {"wrongpath", "nobody", "nowhere"}:
                frame = await events.frame()
                if frame.get("kind") == "network_link_error":
                    seen.append(frame)
        listing = json.loads((await cli(home.cli, "network", "list", "--json")).stdout)
        table = (await cli(home.cli, "network", "list")).stdout
    finally:
        broker.kill()
        broker.communicate(timeout=30)
    kinds = {e["network"]: e["error"]["kind"] for e in seen}
    assert kinds == {"wrongpath": "not_found", "nobody": "refused", "nowhere": "dns"}
    assert len(seen) == 3
    by_id = {n["id"]: n for n in listing}
    assert by_id["fine"]["brokers"] == [f"ws://127.0.0.1:{port}/v1"]
    assert {n: (by_id[n]["link_error"] or {}).get("kind") for n in joins} == {
        "fine": None,
        "wrongpath": "not_found",
        "nobody": "refused",
        "nowhere": "dns",
    }
    assert "not_found: the broker answered HTTP 404 for /v2" in table
    assert "bad" not in by_id
