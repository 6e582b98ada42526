"""A durable message in flight when its peer leaves is sent again as soon as the peer is back,
not when the ack timeout fires, and arrives once (issue 22). Real daemons and broker."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.client import EventStream, MeshClient
from meshactors.client.sync import SyncClient
from tests.e2e import test_durable
from tests.e2e.test_mesh import eventually
from tests.support import Home

pytestmark = pytest.mark.e2e

NET = "redeliver"
ACK_TIMEOUT = "3600"  # s: far beyond WAIT, so only the redelivery on return can deliver
WAIT = 60.0  # seconds for every awaited event
broker = test_durable.broker  # the fixture: a broker process on a free port


@pytest.fixture
def stoppable(homes: tuple[Home, Home]) -> Iterator[list[int]]:
    """Pids the test SIGSTOPs; each gets SIGCONT afterwards so its daemon can be stopped."""
    stopped: list[int] = []
    yield stopped
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def _event(events: EventStream, kind: str, **match: Any) -> dict[str, Any]:
    async for event in events:
        if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event
    raise AssertionError(f"the event stream ended before {kind}")


async def _join(home: Home, url: str) -> str:
    home.cli("daemon", "up", "--detach", "--ack-timeout", ACK_TIMEOUT)
    async with MeshClient(home.socket) as client:
        await client.call(
            "network_add", {"config": {"id": NET, "brokers": [url], "auto_approve": True}}
        )
        return str((await client.call("status"))["device_id"])


def _inflight(home: Home, row_id: str) -> bool | None:
    rows = _outbox(home)
    return True if any(r["id"] == row_id and r["status"] == "inflight" for r in rows) else None


def _outbox(home: Home) -> list[dict[str, Any]]:
    with SyncClient.connect(home.socket) as client:
        rows: list[dict[str, Any]] = client.call("outbox_list", limit=10)["rows"]
    return rows


async def test_a_message_in_flight_when_its_peer_left_is_resent_when_it_returns(
    homes: tuple[Home, Home],
    broker: str,
    stoppable: list[int],
) -> None:
    a, b = homes
    ids = {"a": await _join(a, broker), "b": await _join(b, broker)}
    async with MeshClient(a.socket) as client:
        with client.events() as events, trio.fail_after(WAIT):
            peers = (await client.call("peers_list", {"network": NET}))["peers"]
            if not any(p["device_id"] == ids["b"] and p["status"] == "active" for p in peers):
                await _event(events, "peer_active", network=NET, device_id=ids["b"])
            b_pid = b.daemon_pid()
            assert b_pid is not None
            os.kill(b_pid, signal.SIGSTOP)  # b keeps its connection but cannot ack
            stoppable.append(b_pid)
            sent = await client.send(NET, ids["b"], "hello", client_message_id="m1")
            await trio.to_thread.run_sync(
                lambda: eventually(lambda: _inflight(a, sent["id"]), "the send in flight")
            )
            os.kill(b_pid, signal.SIGKILL)  # b leaves with the message unacked
            await _event(events, "peer_left", network=NET, device_id=ids["b"])
            await trio.to_thread.run_sync(
                lambda: eventually(lambda: True if b.daemon_pid() is None else None, "b gone")
            )
            b.cli("daemon", "up", "--detach", "--ack-timeout", ACK_TIMEOUT)
            delivered = await _event(events, "message_delivered", id=sent["id"])
        assert delivered["recipient"] == ids["b"]
    (row,) = [r for r in _outbox(a) if r["id"] == sent["id"]]
    assert row["status"] == "done"
    assert row["deliveries"][0]["attempts"] == 0  # made due again, not failed and backed off
    async with MeshClient(b.socket) as receiver:
        page = await receiver.inbox(limit=10)
    assert [m["client_message_id"] for m in page["messages"]] == ["m1"]


def test_daemon_up_refuses_an_ack_timeout_or_retention_out_of_range(tmp_path: Path) -> None:
    home = Home(tmp_path)
    for flag in ("--ack-timeout", "--retention-days", "--retention-rows"):
        for value in ("0", "inf", "nan", "1e300", "99999999999999999999", "x"):
            result = home.cli("daemon", "up", flag, value, check=False)
            assert result.returncode == 2, (flag, value, result.stderr)
            assert f"argument {flag}" in result.stderr, (flag, value)
    assert home.daemon_pid() is None
