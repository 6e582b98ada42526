"""A binary stream's local end: the memory channels between the connection's `client` actor
(its reader and writer own the socket) and the network's core, which owns the stream's state.
"""

from __future__ import annotations

import attrs
import trio

from meshactors.wire.pipe_frames import Item

STREAM_INBOX_BYTES = 1024 * 1024  # bytes a connection's reader may read ahead of core's sender
STREAM_INBOX = 8  # ... as items of the channel: data cut into pieces of at most
STREAM_PIECE_BYTES = STREAM_INBOX_BYTES // STREAM_INBOX  # bytes, as the reader reads them
STREAM_FRAME_COST = 256  # credit a data frame costs beyond its length, so tiny frames count


def frame_cost(data: bytes) -> int:
    """What a data frame costs of the credit window: its length plus STREAM_FRAME_COST."""
    return len(data) + STREAM_FRAME_COST


@attrs.define(eq=False)
class Pipe:
    """The connection's side of one stream: what it writes to the socket, what it read from
    it, and the credit cost of what it wrote (so core can hand credit back); `resetting`
    ends once core queued the stream's error frame, and `finished` once the stream finished
    both ways, so the writer puts a deadline on the rest."""

    stream_id: str
    network: str
    peer: str
    method: str
    timeout: float  # seconds what the program sent may take to reach core once it hung up
    to_socket: trio.MemoryReceiveChannel[Item]
    from_socket: trio.MemorySendChannel[Item]
    consumed: trio.MemorySendChannel[int]
    resetting: trio.MemoryReceiveChannel[None]
    finished: trio.MemoryReceiveChannel[None]

    def answer(self) -> dict[str, str]:
        """The ok answer of the op that made this connection a pipe."""
        return {
            "stream_id": self.stream_id,
            "network": self.network,
            "peer": self.peer,
            "method": self.method,
        }


@attrs.define(eq=False)
class PipeCore:
    """Core's side of the same channels; it closes `resetting` (which carries nothing) once
    it queued the stream's error frame on `to_socket`, and `finished` (nor does it) once the
    stream finished."""

    to_socket: trio.MemorySendChannel[Item]
    from_socket: trio.MemoryReceiveChannel[Item]
    consumed: trio.MemoryReceiveChannel[int]
    resetting: trio.MemorySendChannel[None]
    finished: trio.MemorySendChannel[None]


def open_pipe(
    stream_id: str, network: str, peer: str, method: str, timeout: float, to_socket_capacity: int
) -> tuple[Pipe, PipeCore]:
    """The two sides of a new stream's channels."""
    to_send, to_receive = trio.open_memory_channel[Item](to_socket_capacity)
    from_send, from_receive = trio.open_memory_channel[Item](STREAM_INBOX)
    consumed_send, consumed_receive = trio.open_memory_channel[int](to_socket_capacity)
    resetting_send, resetting_receive = trio.open_memory_channel[None](0)
    finished_send, finished_receive = trio.open_memory_channel[None](0)
    pipe = Pipe(
        stream_id,
        network,
        peer,
        method,
        timeout,
        to_receive,
        from_send,
        consumed_send,
        resetting_receive,
        finished_receive,
    )
    core = PipeCore(to_send, from_receive, consumed_receive, resetting_send, finished_send)
    return pipe, core
