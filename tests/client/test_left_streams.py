"""The stream table's memory of streams left before their end is bounded: each is held until
its deadline (the daemon has ended it, or lost it, by then), and at most LEFT_STREAMS at once."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.client import _streams
from meshactors.client._streams import StreamTable, stream_allowed

LEFT_TIMEOUT_MS = 1_000  # the given-up calls' own deadline


async def test_a_left_stream_is_forgotten_past_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = StreamTable()
    table.leave("s1", LEFT_TIMEOUT_MS)
    await trio.sleep(stream_allowed(LEFT_TIMEOUT_MS))
    table.leave("s2", LEFT_TIMEOUT_MS)  # each leave forgets those past their deadline
    assert list(table._left) == ["s2"]


async def test_at_most_left_streams_are_kept(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_streams, "LEFT_STREAMS", 2)
    table = StreamTable()
    for request_id in ("s1", "s2", "s3"):
        table.leave(request_id, None)
    assert list(table._left) == ["s2", "s3"]  # the one left longest ago went first
