"""Cancelling a MeshClient block with a call in flight only leaves it: the connection going
down with it cancels the call at the daemon, so giving the call up starts nothing then."""

from __future__ import annotations

from pathlib import Path

import trio

from meshactors.client import MeshClient
from tests.client.fakedaemon import fake_daemon

GIVE_UP_RUNS = 40  # the connection's end and the call's give-up race: each run has one order


async def test_an_outer_cancel_with_a_call_in_flight_leaves_quietly(tmp_path: Path) -> None:
    async with fake_daemon(tmp_path / "daemon.sock") as daemon:
        daemon.never_answered.add("rpc_call")
        with trio.fail_after(30):
            for _ in range(GIVE_UP_RUNS):
                async with trio.open_nursery() as nursery:
                    with trio.CancelScope() as outer:

                        async def cancel_once_called() -> None:
                            session = await daemon.next_session()
                            await session.wait_op("rpc_call")
                            outer.cancel()

                        nursery.start_soon(cancel_once_called)
                        async with MeshClient(daemon.path) as client:
                            await client.rpc_call("lan", "peer", "slow", None)
                    assert outer.cancelled_caught
