"""How core's parts (rpc, channels, streams, the state replica) reach peers: send a frame to a
device, or to this daemon itself.

A frame addressed to our own device id never touches the link: it goes straight to the
handler registered for its tag, so programs on one machine talk through the daemon without
a broker. Code that must not wait (frame handlers, cleanups) posts frames to a `Postbox`,
which its part drains in order (a task in core's nursery).
"""

from __future__ import annotations

import collections
from typing import Protocol

import attrs
import trio

from meshactors.network.peers import AppHandler
from meshactors.wire.device_id import device_name
from meshactors.wire.ipc import OpError
from meshactors.wire.peer import Frame

POSTBOX_CAPACITY = 4096  # frames queued by non-waiting code before more are dropped (counted)


class PeerSender(Protocol):
    """The part of the peer table application traffic uses."""

    def register_app_handler(self, tag: str, handler: AppHandler) -> None: ...

    async def send_app(self, device_id: str, frame: Frame) -> None: ...

    def send_app_nowait(self, device_id: str, frame: Frame) -> bool: ...

    def active_peers(self) -> list[str]: ...


@attrs.define(eq=False)
class AppWire:
    """Sends application frames to a peer, or hands them to our own handler for our device."""

    peers: PeerSender
    own_id: str
    own_label: str | None = None
    _handlers: dict[str, AppHandler] = attrs.field(factory=dict, init=False)

    @property
    def own_name(self) -> str:
        """This device as an error we send a peer names it (`here` would name the caller's)."""
        return device_name(self.own_id, self.own_label)

    def register(self, tag: str, handler: AppHandler) -> None:
        """Route frames of type `tag`, from active peers and from ourselves, to `handler`."""
        self._handlers[tag] = handler
        self.peers.register_app_handler(tag, handler)

    async def send(self, device_id: str, frame: Frame) -> None:
        """Deliver `frame` to `device_id` (OpError no_such_peer, peer_not_active, link_down)."""
        if device_id == self.own_id:
            self._handlers[frame.tag](self.own_id, frame)
        else:
            await self.peers.send_app(device_id, frame)

    def send_nowait(self, device_id: str, frame: Frame) -> bool:
        """Deliver `frame` without waiting; False (nothing sent) when `send` must do it."""
        if device_id == self.own_id:
            self._handlers[frame.tag](self.own_id, frame)
            return True
        return self.peers.send_app_nowait(device_id, frame)

    def active_peers(self) -> list[str]:
        """Peers application frames may go to now (never ourselves)."""
        return self.peers.active_peers()


@attrs.define(eq=False)
class Postbox:
    """Frames to send later, in order, for code that must not wait; full means dropped."""

    wire: AppWire
    capacity: int = POSTBOX_CAPACITY
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _send: trio.MemorySendChannel[tuple[str, Frame]] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[tuple[str, Frame]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[str, Frame]](self.capacity)

    def post(self, device_id: str, frame: Frame) -> None:
        """Queue `frame` for `device_id` without waiting."""
        try:
            self._send.send_nowait((device_id, frame))
        except trio.WouldBlock:
            self.dropped["postbox_full"] += 1

    async def drain(self) -> None:
        """Send posted frames until cancelled; a frame that cannot go is counted, not retried."""
        async for device_id, frame in self._receive:
            try:
                await self.wire.send(device_id, frame)
            except OpError as failed:
                self.dropped[failed.code.value] += 1

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return self._receive.statistics().current_buffer_used
