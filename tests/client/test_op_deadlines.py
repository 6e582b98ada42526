"""The client waits as long as the daemon may take: an `rpc_call` its `timeout_ms`, a
reliable channel send its `ttl_ms`, each plus a margin, whatever the call timeout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshactors.client._ops import RELIABLE_DEADLINE_MARGIN, RPC_DEADLINE_MARGIN, Data, Ops


class _Waits(Ops):
    """Ops that answer at once and note how long each call would have waited."""

    def __init__(self) -> None:
        self.timeouts: dict[str, float | None] = {}

    async def call(
        self, op: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Data:
        self.timeouts[op] = timeout
        return {}


async def test_calls_that_wait_on_a_peer_wait_their_own_deadline_and_a_margin() -> None:
    ops = _Waits()
    await ops.rpc_call("lan", "peer", "echo", timeout_ms=120_000)
    await ops.channel_send_reliable("lan", "news", "peer", {"n": 1}, ttl_ms=300_000)
    await ops.status()
    assert ops.timeouts == {
        "rpc_call": 120 + RPC_DEADLINE_MARGIN,
        "channel_send_reliable": 300 + RELIABLE_DEADLINE_MARGIN,
        "status": None,  # the client's call timeout
    }
