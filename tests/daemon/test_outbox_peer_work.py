"""The outbox's peer work queue (daemon.outbox._PeerWorkQueue): what the watcher hands over
while a write waits for the disk is taken at once, one of each job, up to PEER_WORK_QUEUE."""

from __future__ import annotations

import trio
import trio.testing

from meshactors.daemon.outbox import (
    PEER_WORK_QUEUE,
    _BuryEvicted,
    _DueNow,
    _PeerWork,
    _PeerWorkQueue,
)
from meshactors.store.retry import STORAGE_RETRY_S


async def test_work_handed_over_during_a_wait_is_taken_once_each_oldest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    work, taken = trio.open_memory_channel[_PeerWork](PEER_WORK_QUEUE)
    queue = _PeerWorkQueue(taken)
    handed = [_DueNow("n", "p"), _BuryEvicted("n"), _DueNow("n", "p"), _DueNow("n", "q")]
    for job in handed:
        work.send_nowait(job)
    await queue.gather(STORAGE_RETRY_S)
    assert taken.statistics().current_buffer_used == 0  # the watcher has room again
    done = [await queue.next() for _ in range(3)]
    assert done == [_DueNow("n", "p"), _BuryEvicted("n"), _DueNow("n", "q")]
    assert queue.pending == {}


async def test_past_peer_work_queue_different_jobs_the_rest_wait_in_the_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    work, taken = trio.open_memory_channel[_PeerWork](PEER_WORK_QUEUE)
    queue = _PeerWorkQueue(taken)
    for n in range(PEER_WORK_QUEUE):
        work.send_nowait(_DueNow("n", f"p{n}"))
    await queue.gather(STORAGE_RETRY_S)
    work.send_nowait(_DueNow("n", "one more"))
    await queue.gather(STORAGE_RETRY_S)
    assert (len(queue.pending), taken.statistics().current_buffer_used) == (PEER_WORK_QUEUE, 1)
    assert await queue.next() == _DueNow("n", "p0")
    await queue.gather(STORAGE_RETRY_S)  # the one waiting takes the place p0 left
    assert (len(queue.pending), taken.statistics().current_buffer_used) == (PEER_WORK_QUEUE, 0)
