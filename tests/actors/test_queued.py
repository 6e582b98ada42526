"""take_queued: a batch is what already waits on a channel, never more, never a wait."""

from __future__ import annotations

import trio

from meshactors.actors import take_queued


def test_it_takes_what_waits_oldest_first_up_to_the_limit() -> None:
    send, receive = trio.open_memory_channel[int](10)
    for n in range(5):
        send.send_nowait(n)
    assert take_queued(receive, 3) == [0, 1, 2]
    assert take_queued(receive, 3) == [3, 4]
    assert take_queued(receive, 3) == []  # empty: no wait


def test_a_closed_channel_gives_what_was_left_then_nothing() -> None:
    send, receive = trio.open_memory_channel[int](10)
    send.send_nowait(7)
    send.close()
    assert take_queued(receive, 5) == [7]
    assert take_queued(receive, 5) == []
