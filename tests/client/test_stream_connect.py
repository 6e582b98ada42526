"""A binary stream's own connection: a daemon that took its switching op and never answers
it fails the op once the op's own bound and STREAM_DEADLINE_MARGIN passed (DeadlineExceeded),
rather than leaving the program waiting forever. Its connect is tried again while nothing of
the op reached the daemon (no socket, no listener, the connection closed before the op's
first byte was written), and never once the op was written: it could run twice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from meshactors.client import ClientError, DeadlineExceeded, MeshClient, _conn
from meshactors.client.binary import STREAM_DEADLINE_MARGIN
from tests.client.conftest import NETWORK, LocalDaemon
from tests.client.fakedaemon import fake_session

SWITCH_WAIT = 600.0  # seconds (of the mock clock) the tests below may take before they fail
OPEN_TIMEOUT_MS = 2_000  # the open's own bound, sent to the daemon as `timeout_ms`
SWITCH_CONNECT_TIMEOUT = 5.0  # the client's call_timeout: the bound of a stream's connect
CLOSED_BEFORE_SENT = 3  # stream connections the daemon closes before the op is written
RESTART_WAIT = 30.0  # seconds the real-daemon test may take before it fails


@attrs.define(eq=False)
class LateSender:
    """Stands for a program slow to write after its connect: the first `slow` connections it
    makes return only once the daemon closed them (the socket reads end-of-file), so the op
    is written to a connection already closed, as when a refusing daemon is quicker."""

    slow: int
    connects: int = 0
    _open: Callable[[Path], Awaitable[trio.SocketStream]] = _conn.open_unix

    async def open(self, path: Path) -> trio.SocketStream:
        self.connects += 1
        stream = await self._open(path)
        if self.connects <= self.slow:
            await trio.lowlevel.wait_readable(stream.socket)  # the daemon closed it, unread
        return stream


@pytest.mark.parametrize("op", ["stream_open", "stream_accept"])
async def test_a_stream_op_the_daemon_never_answers_ends_past_its_timeout_and_margin(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, op: str
) -> None:
    """An open waits its own `timeout_ms` and the margin; an accept, with no bound of its own,
    the margin alone."""
    async with fake_session(tmp_path) as (daemon, client, _):
        daemon.never_answered.add(op)
        started = trio.current_time()
        with trio.fail_after(SWITCH_WAIT), pytest.raises(DeadlineExceeded) as late:
            if op == "stream_open":
                await client.open_stream("lan", "peer", "bulk", timeout_ms=OPEN_TIMEOUT_MS)
            else:
                await client.accept_stream("lan", "s1")
        waited = trio.current_time() - started
        session = await daemon.next_session()
    own = OPEN_TIMEOUT_MS / 1000 if op == "stream_open" else 0.0
    assert waited >= own + STREAM_DEADLINE_MARGIN
    assert late.value.code == "deadline"
    assert session.ops == [op]


async def test_a_stream_connection_closed_before_its_op_was_written_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fake_session(tmp_path) as (daemon, client, _):
        daemon.closed_at_once = CLOSED_BEFORE_SENT
        late = LateSender(CLOSED_BEFORE_SENT)
        monkeypatch.setattr(_conn, "open_unix", late.open)
        with trio.fail_after(RESTART_WAIT):
            async with await client.open_stream("lan", "peer", "bulk") as stream:
                session = await daemon.next_session()  # the one answered
    assert late.connects == CLOSED_BEFORE_SENT + 1
    assert daemon.closed_at_once == 0
    assert session.ops == ["stream_open"]
    assert daemon.received["stream_open"] == 1
    assert stream.stream_id == "s1"


async def test_stream_connections_closed_before_the_op_for_its_whole_timeout_raise_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_session(tmp_path, call_timeout=SWITCH_CONNECT_TIMEOUT) as (daemon, client, _):
        daemon.closed_at_once = 10**9  # closes every one
        late = LateSender(10**9)
        monkeypatch.setattr(_conn, "open_unix", late.open)
        started = trio.current_time()
        with trio.fail_after(SWITCH_WAIT), pytest.raises(ClientError) as lost:
            await client.open_stream("lan", "peer", "bulk")
        waited = trio.current_time() - started
    assert lost.value.code == "connection_lost"
    assert waited >= SWITCH_CONNECT_TIMEOUT
    assert late.connects > 1
    assert daemon.received["stream_open"] == 0


@pytest.mark.parametrize("after_reading", ["hangs_up", "answers_unavailable"])
async def test_a_stream_op_the_daemon_read_is_never_sent_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, after_reading: str
) -> None:
    async with fake_session(tmp_path, call_timeout=SWITCH_CONNECT_TIMEOUT) as (daemon, client, _):
        if after_reading == "hangs_up":
            daemon.hang_up_on.add("stream_open")
        else:  # the op's own refusal: it may have reached core
            daemon.refused["stream_open"] = "unavailable"
        with trio.fail_after(SWITCH_WAIT), pytest.raises(ClientError) as failed:
            await client.open_stream("lan", "peer", "bulk")
    assert failed.value.code == {"hangs_up": "connection_lost"}.get(after_reading, "unavailable")
    assert daemon.received["stream_open"] == 1


async def test_a_stream_opened_while_the_daemon_restarts_reaches_it_once_back(
    running: LocalDaemon,
) -> None:
    async with MeshClient(running.paths.socket, call_timeout=RESTART_WAIT) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await running.stop()
        answers: list[str] = []

        async def open_unserved() -> None:
            with pytest.raises(ClientError) as refused:
                await client.open_stream("lan", me, "nobody_serves")
            answers.append(refused.value.code)

        with trio.fail_after(RESTART_WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_unserved)
                await trio.testing.wait_all_tasks_blocked()  # it is waiting for the socket
                assert not answers
                await running.start()
    assert answers == ["no_handler"]  # the restarted daemon's answer


async def test_a_negative_stream_timeout_is_the_daemons_invalid_params(
    running: LocalDaemon,
) -> None:
    """A `timeout_ms` far below zero made the client's own wait a negative one, a ValueError
    after the op was sent; the daemon's answer is what the program gets."""
    async with MeshClient(running.paths.socket, call_timeout=RESTART_WAIT) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        with trio.fail_after(RESTART_WAIT), pytest.raises(ClientError) as refused:
            await client.open_stream("lan", me, "bulk", timeout_ms=-20_000)
    assert refused.value.code == "invalid_params"
