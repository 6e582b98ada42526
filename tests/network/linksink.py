"""A sink for a bare `Link` in tests: keeps every state report, queues everything else."""

from __future__ import annotations

import attrs
import trio

from meshactors.network.link import LinkEvent, LinkStatus, LinkUp
from meshactors.network.link_errors import LinkError


@attrs.define(eq=False)
class LinkEventRecorder:
    """Stands where core's inbox would: `statuses` in order, other events on `events`."""

    statuses: list[LinkStatus] = attrs.field(factory=list)
    hold: trio.Event | None = None  # while set and not fired, events wait (a stuck core)
    _new_status: trio.Event = attrs.field(factory=trio.Event)  # set by the next status
    _send: trio.MemorySendChannel[LinkEvent] = attrs.field(init=False)
    events: trio.MemoryReceiveChannel[LinkEvent] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self.events = trio.open_memory_channel[LinkEvent](1000)

    async def send(self, event: LinkEvent, /) -> None:
        if isinstance(event, LinkStatus):
            self.statuses.append(event)
            self._new_status.set()
            self._new_status = trio.Event()
        else:
            if self.hold is not None:
                await self.hold.wait()
            await self._send.send(event)

    async def up(self) -> LinkUp:
        """The next event, which must be the welcome's LinkUp."""
        event = await self.events.receive()
        assert isinstance(event, LinkUp), event
        return event

    async def first_error(self) -> LinkError:
        """The error of the link's first failed attempt, once it has reported one."""
        while True:
            for status in self.statuses:
                if status.error is not None:
                    return status.error
            await self._new_status.wait()
