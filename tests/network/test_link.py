"""The link's reconnect policy: full-jitter backoff within documented bounds, URLs in turn."""

from __future__ import annotations

import random
import socket

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.network.link import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    Link,
    LinkDown,
    LinkEvent,
    backoff_delay,
)


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not fixed
        assert min(delays) < ceiling * 0.2
    assert backoff_delay(10_000, rng) <= BACKOFF_CAP


def _refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1"


async def test_an_unreachable_broker_is_retried_with_backoff_and_sends_fail_clearly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, _receive = trio.open_memory_channel[LinkEvent](10)
    urls = [_refused_url(), _refused_url()]
    link = Link("net1", urls, SigningKey.generate(), send, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await trio.sleep(60)  # virtual time
        # Retry k waits at most BACKOFF_BASE * 2**k: 60 s hold the first seven (ceilings sum
        # to 31.75 s) whatever the jitter draws.
        assert link.failures >= 7
        assert link.state in ("backoff", "connecting")
        assert link.connects == 0
        assert link.last_error is not None
        assert not link.up
        with pytest.raises(LinkDown, match="net1"):
            await link.send(bytes(32), b"x")
        nursery.cancel_scope.cancel()
    assert link.state == "stopped"
