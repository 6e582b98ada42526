"""A broker link that flaps (up, down, up, ...) costs the event stream a burst of
`network_phase` events, then one per STATUS_EVENT_INTERVAL: status shows each phase at once,
the changes not told are counted, and the latest phase is told once the pace allows, each
event's `previous` the phase told before it (MockClock)."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.identity import Identity
from meshactors.network.link import LinkLost, LinkUp
from meshactors.network.peers import (
    PHASE_EVENT_BURST,
    PHASE_UNTOLD,
    STATUS_EVENT_INTERVAL,
    Peers,
    Phase,
)
from tests.network.conftest import NET

LINK_FLAPS = 100  # the link comes up and goes down this many times, then comes up for good


@attrs.define
class PhaseRecorder:
    """Stands in for the event hub: keeps the (previous, phase) of each network_phase event."""

    told: list[tuple[str, str]] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "network_phase":
            self.told.append((data["previous"], data["phase"]))
            self.changed.set()
            self.changed = trio.Event()


async def link(peers: Peers, *, up: bool) -> None:
    """Hand core's peer table the link coming up (no peer present) or going down, and let it
    settle, as core does after each message."""
    outbound: Any = object()  # the link's queue: nothing is sent, as no peer is present
    await peers.on_link_event(LinkUp("ws://broker", [], outbound) if up else LinkLost("flap"))
    await peers.settle(queued=lambda: 0)


async def test_a_flapping_link_is_told_a_burst_then_its_latest_phase(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = PhaseRecorder()
    unused: Any = None  # no store: nothing here saves
    peers = Peers(NET, Identity(SigningKey.generate()), unused, recorder)
    nursery.start_soon(peers.retell_loop)
    for _ in range(LINK_FLAPS):
        await link(peers, up=True)
        await link(peers, up=False)
    await link(peers, up=True)
    phase, untold = peers.phase, peers.figures()["dropped"]
    assert phase is Phase.ALONE  # each change is the table's at once
    assert len(recorder.told) == PHASE_EVENT_BURST
    assert untold[PHASE_UNTOLD] == 2 * LINK_FLAPS + 1 - PHASE_EVENT_BURST
    with trio.fail_after(10 * STATUS_EVENT_INTERVAL):  # the clock jumps while all sleep
        while recorder.told[-1][1] != Phase.ALONE:
            await recorder.changed.wait()
    assert len(recorder.told) == PHASE_EVENT_BURST + 1  # and the latest, once
    phases = [Phase.CONNECTING.value, *(phase for _, phase in recorder.told)]
    assert [previous for previous, _ in recorder.told] == phases[:-1]  # a chain: none skipped
