"""A daemon that closes the client's first connection unanswered (past MAX_REFUSING refused
connections at once) is waited for like one too full to take it: the connect is retried
until connect_timeout, and only then the lost connection raised."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.client import ClientError, MeshClient
from tests.client.fakedaemon import fake_daemon

UNANSWERED_WAIT = 10.0  # seconds the tests below may take before they fail
UNANSWERED_CONNECT_TIMEOUT = 0.5  # seconds the client waits for a daemon that never answers
CLOSED_FIRST = 3  # connections the daemon closes unanswered before it answers one


async def test_a_first_connect_closed_unanswered_is_retried_until_answered(
    tmp_path: Path,
) -> None:
    async with fake_daemon(tmp_path / "daemon.sock") as daemon:
        daemon.closed_at_once = CLOSED_FIRST
        with trio.fail_after(UNANSWERED_WAIT):
            async with MeshClient(daemon.path, connect_timeout=UNANSWERED_WAIT) as client:
                session = await daemon.next_session()  # the one answered
                await client.call("status")
        assert daemon.closed_at_once == 0
        assert session.ops == ["events_subscribe", "status"]


async def test_a_daemon_closing_unanswered_for_the_whole_connect_timeout_raises_it(
    tmp_path: Path,
) -> None:
    async with fake_daemon(tmp_path / "daemon.sock") as daemon:
        daemon.closed_at_once = 10**9  # never answers
        started = trio.current_time()
        with trio.fail_after(UNANSWERED_WAIT), pytest.raises(ClientError) as lost:
            async with MeshClient(daemon.path, connect_timeout=UNANSWERED_CONNECT_TIMEOUT):
                pass
        assert trio.current_time() - started >= UNANSWERED_CONNECT_TIMEOUT
        assert daemon.closed_at_once < 10**9 - 1  # tried more than once
        assert lost.value.code == "connection_lost"
