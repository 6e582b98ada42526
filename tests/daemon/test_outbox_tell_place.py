"""How long an op hands the outbox deliveries it made dead: whatever the op meets (a hang-up
cancels it), until a place frees or TELL_PLACE_TIMEOUT has passed, never for ever."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshactors.actors import Inbox
from meshactors.daemon import outbox


async def test_a_tell_cancelled_while_the_queue_is_full_still_gets_in_once_a_place_frees(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox = Inbox[str](1)
    inbox.sender.send_nowait("earlier")
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.cancel()  # the op's caller hung up at once
        nursery.start_soon(outbox._Shielded(inbox).send, "aborted")
        with trio.CancelScope(shield=True):
            await trio.sleep(outbox.TELL_PLACE_TIMEOUT / 2)
            assert inbox.receiver.receive_nowait() == "earlier"
            await trio.testing.wait_all_tasks_blocked()
    assert inbox.receiver.receive_nowait() == "aborted"


async def test_a_tell_that_finds_no_place_gives_up_after_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox = Inbox[str](1)
    inbox.sender.send_nowait("earlier")  # and nobody takes it: the outbox is gone
    started = trio.current_time()
    with pytest.raises(trio.BrokenResourceError):
        await outbox._Shielded(inbox).send("aborted")
    assert trio.current_time() - started == pytest.approx(outbox.TELL_PLACE_TIMEOUT)
