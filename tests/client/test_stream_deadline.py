"""A streamed call's iteration ends by the call's deadline even if the daemon never ends the
stream (stopped, or gone quiet): `timeout_ms` is the whole stream's deadline at the daemon, and
the client waits that and the margin an `rpc_call` waits, then raises DeadlineExceeded after
the chunks it got and cancels the call as it leaves the block."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.client import DeadlineExceeded, MeshClient
from meshactors.client._ops import RPC_DEADLINE_MARGIN
from meshactors.network.rpc import DEFAULT_TIMEOUT_MS
from tests.client.fakedaemon import fake_daemon
from tests.client.test_stream_lag import stream_event


@pytest.mark.parametrize(
    ("timeout_ms", "waited"),
    [(2_000, 2 + RPC_DEADLINE_MARGIN), (None, DEFAULT_TIMEOUT_MS / 1000 + RPC_DEADLINE_MARGIN)],
    ids=["named", "default"],
)
async def test_a_stream_the_daemon_never_ends_fails_past_its_deadline(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    timeout_ms: int | None,
    waited: float,
) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        started = trio.current_time()
        async with client.rpc_call_stream("lan", "peer", "slow", timeout_ms=timeout_ms) as chunks:
            await session.send(stream_event("rpc_call_stream_chunk", payload=0))
            with trio.fail_after(waited + 1), pytest.raises(DeadlineExceeded) as failure:
                async for n in chunks:  # without the deadline: waits forever after chunk 0
                    assert n == 0
        assert trio.current_time() - started == pytest.approx(waited)
        assert failure.value.code == "deadline"
        await session.wait_op("rpc_cancel")  # the daemon is told the caller gave up


async def test_chunks_received_before_the_deadline_are_read_before_its_failure(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        started = trio.current_time()
        async with client.rpc_call_stream("lan", "peer", "slow", timeout_ms=1_000) as chunks:
            await session.send_together(
                [stream_event("rpc_call_stream_chunk", payload=n) for n in (0, 1)]
            )
            await trio.sleep_until(started + 1 + RPC_DEADLINE_MARGIN)  # nobody reads meanwhile
            received = []
            with trio.fail_after(1), pytest.raises(DeadlineExceeded):
                async for n in chunks:  # without the deadline: waits forever after chunk 1
                    received.append(n)
    assert received == [0, 1]
