"""A binary stream's own connection: a daemon that took its switching op and never answers
it fails the op once the op's own bound and STREAM_DEADLINE_MARGIN passed (DeadlineExceeded),
rather than leaving the program waiting forever."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from meshactors.client import DeadlineExceeded
from meshactors.client.binary import STREAM_DEADLINE_MARGIN
from tests.client.fakedaemon import fake_session

SWITCH_WAIT = 600.0  # seconds (of the mock clock) the tests below may take before they fail
OPEN_TIMEOUT_MS = 2_000  # the open's own bound, sent to the daemon as `timeout_ms`


async def test_an_open_the_daemon_never_answers_ends_past_its_timeout_and_margin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_session(tmp_path) as (daemon, client, _):
        daemon.never_answered.add("stream_open")
        started = trio.current_time()
        with trio.fail_after(SWITCH_WAIT), pytest.raises(DeadlineExceeded) as late:
            await client.open_stream("lan", "peer", "bulk", timeout_ms=OPEN_TIMEOUT_MS)
        waited = trio.current_time() - started
        session = await daemon.next_session()
    assert waited >= OPEN_TIMEOUT_MS / 1000 + STREAM_DEADLINE_MARGIN
    assert late.value.code == "deadline"
    assert session.ops == ["stream_open"]


async def test_an_accept_the_daemon_never_answers_ends_past_the_margin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_session(tmp_path) as (daemon, client, _):
        daemon.never_answered.add("stream_accept")
        started = trio.current_time()
        with trio.fail_after(SWITCH_WAIT), pytest.raises(DeadlineExceeded) as late:
            await client.accept_stream("lan", "s1")
        waited = trio.current_time() - started
        session = await daemon.next_session()
    assert waited >= STREAM_DEADLINE_MARGIN
    assert late.value.code == "deadline"
    assert session.ops == ["stream_accept"]
