"""The peer table as an `AppWire` sees it, for a part run alone: frames sent are recorded
instead of sealed, and a test hands frames to the handlers as if they came from a peer."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from meshactors.network.peers import AppHandler
from meshactors.wire.peer import Frame


@attrs.define
class RecordingPeers:
    """The peer layer's surface with `active` the active peers, every frame sent kept in `sent`."""

    active: list[str]
    handlers: dict[str, AppHandler] = attrs.field(factory=dict)
    sent: list[tuple[str, Frame]] = attrs.field(factory=list)
    _sending: trio.Event = attrs.field(factory=trio.Event)  # set at the next frame sent

    def register_app_handler(self, tag: str, handler: AppHandler) -> None:
        self.handlers[tag] = handler

    async def send_app(self, device_id: str, frame: Frame) -> None:
        self._record(device_id, frame)

    def send_app_nowait(self, device_id: str, frame: Frame) -> bool:
        self._record(device_id, frame)
        return True

    def _record(self, device_id: str, frame: Frame) -> None:
        self.sent.append((device_id, frame))
        self._sending.set()
        self._sending = trio.Event()

    async def wait_sent(self, kind: type[Frame], count: int) -> None:
        """Return once `count` frames of type `kind` were sent."""
        while len(self.of(kind)) < count:
            sending = self._sending
            await sending.wait()

    def active_peers(self) -> list[str]:
        return list(self.active)

    def deliver(self, frame: Frame) -> None:
        """A frame arriving from the first active peer."""
        self.handlers[frame.tag](self.active[0], frame)

    def of(self, kind: type[Frame]) -> list[Any]:
        """The frames of type `kind` sent, in order."""
        return [frame for _, frame in self.sent if isinstance(frame, kind)]
