"""The binary streams of one network as core keeps them: a sans-IO table (indexes by the local
program's id and by (peer, opener's id, side)) and each stream's credit and sequence rules,
which tests drive without sockets or tasks. The `streams` part does the I/O around it."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import attrs
import trio

from meshactors.actors import Pending
from meshactors.network.stream_frames import STREAM_WINDOW_BYTES
from meshactors.network.stream_pipe import Pipe, PipeCore
from meshactors.wire.pipe_frames import Item

MAX_STREAMS = 128  # streams open per network, those waiting to be accepted included
CREDIT_RETURN = STREAM_WINDOW_BYTES // 4  # credit consumed before it is handed back
# stream bytes in flight to one peer (sent, their credit not back yet), all its streams
# together: half what the broker queues for one receiver (OUTBOUND_QUEUE_BYTES, 8 MiB), which
# this daemon alone never fills with streams; several senders to one peer, together with its
# state pages and RPC traffic, still can
PEER_STREAM_BYTES = 4 * 1024 * 1024
# credit handed back early once the connection wrote all that came: streams whose programs
# keep up then never sit on their peer's budget, as all of them together hold back at most half
CREDIT_TRICKLE = PEER_STREAM_BYTES // (2 * MAX_STREAMS)
# streams ended lately remembered per peer, so that a frame of one crossing its end (the
# peer's last credit as our end goes out) is told from a stray frame; the oldest goes first
ENDED_KEPT = 32

Key = tuple[str, str, bool]  # (peer, the opener's id, whether we opened it)


@attrs.define(eq=False)
class StreamState:
    """One binary stream: who and what it is, where it stands, and its credit both ways."""

    local_id: str  # what the local program calls it
    wire_id: str  # the opener's id, on the wire
    peer: str
    method: str
    opener: bool  # we opened it
    timeout: float  # seconds: the stream_open's timeout_ms, for the accept and the last sends
    ready: Pending[Pipe] | None = None  # the opener's op waits on it until the peer accepted
    due: float = float("inf")  # trio time: a stream not accepted by then goes, and one whose
    # program left goes by then too (`left`: it is kept only to send what the program sent)
    core: PipeCore | None = None  # attached once the stream flows
    taker: str | None = None  # the connection (client id) whose stream_open or _accept set it up
    send_credit: int = STREAM_WINDOW_BYTES  # what we may still send
    allowance: int = STREAM_WINDOW_BYTES  # what the peer may still send us
    held: int = 0  # credit of what arrived and the connection has not written yet
    owed: int = 0  # credit the connection wrote that we have not handed back yet
    seq_out: int = 0
    seq_in: int = 0
    local_ended: bool = False
    remote_ended: bool = False
    left: bool = False  # the local program's connection closed: nothing reaches it any more
    lost: bool = False  # data the peer sent it was not written before it left, or came after
    unsent: collections.deque[Item] = attrs.field(factory=collections.deque)  # what the
    # program sent, read at once when it left (to see whether its end came), not sent yet
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    changed: trio.Event = attrs.field(factory=trio.Event)  # credit came

    @property
    def key(self) -> Key:
        return (self.peer, self.wire_id, self.opener)

    def wake(self) -> None:
        """Wake the stream's sender to look at its credit again."""
        self.changed.set()
        self.changed = trio.Event()

    def spend(self, cost: int) -> int | None:
        """Spend credit for a data frame of `cost`: its sequence number, or None (nothing
        spent) while the credit is short."""
        if cost > self.send_credit:
            return None
        self.send_credit -= cost
        self.seq_out += 1
        return self.seq_out

    def arrived(self, seq: int, cost: int) -> bool:
        """Take a data frame from the peer; False when it breaks the rules (out of sequence,
        beyond the credit granted), and then nothing changed."""
        if seq != self.seq_in + 1 or cost > self.allowance:
            return False
        self.seq_in = seq
        self.allowance -= cost
        self.held += cost
        return True

    def granted(self, credit: int) -> bool:
        """The peer handed `credit` back; False (nothing changed) beyond the window."""
        if self.send_credit + credit > STREAM_WINDOW_BYTES:
            return False
        self.send_credit += credit
        self.wake()
        return True

    def written(self, cost: int) -> int:
        """The connection wrote `cost` of what arrived: the credit to hand back now, once a
        quarter window is owed, or CREDIT_TRICKLE with all that came written (else 0); after
        the peer's end too while ours has not gone out, as it frees the peer's budget
        (PEER_STREAM_BYTES). Once both ends are done none: the peer forgot the stream (its
        budget back) or does once our end comes, so credit would find no stream."""
        self.held -= cost
        self.owed += cost
        if self.remote_ended and self.local_ended:
            return 0
        if self.owed < CREDIT_RETURN and (self.held or self.owed < CREDIT_TRICKLE):
            return 0
        credit, self.owed = self.owed, 0
        self.allowance += credit
        return credit


@attrs.define(eq=False)
class BinaryStreamTable:
    """Streams by local id and by (peer, opener's id, side), at most `limit`; and the keys of
    the last `ended_kept` each peer had that ended (`forget`), until it stops being active."""

    limit: int = MAX_STREAMS
    ended_kept: int = ENDED_KEPT
    _by_key: dict[Key, StreamState] = attrs.field(factory=dict, init=False)
    _by_local: dict[str, StreamState] = attrs.field(factory=dict, init=False)
    _ended: dict[str, dict[Key, None]] = attrs.field(factory=dict, init=False)  # oldest first

    def has_room(self) -> bool:
        return len(self._by_local) < self.limit

    def add(self, state: StreamState) -> None:
        self._by_key[state.key] = state
        self._by_local[state.local_id] = state
        self._ended.get(state.peer, {}).pop(state.key, None)

    def holds(self, state: StreamState) -> bool:
        """Whether `state` is in the table (not forgotten)."""
        return self._by_local.get(state.local_id) is state

    def forget(self, state: StreamState) -> bool:
        """Drop `state`; False when it was not in the table."""
        if not self.holds(state):
            return False
        del self._by_local[state.local_id]
        del self._by_key[state.key]
        ended = self._ended.setdefault(state.peer, {})
        ended[state.key] = None
        if len(ended) > self.ended_kept:
            del ended[next(iter(ended))]
        return True

    def ended_lately(self, peer: str, wire_id: str, *, ours: bool) -> bool:
        """Whether the stream `peer` means by `wire_id` is one of its last that ended."""
        return (peer, wire_id, ours) in self._ended.get(peer, {})

    def peer_gone(self, peer: str) -> None:
        """`peer` stopped being active: what ended with it is forgotten too."""
        self._ended.pop(peer, None)

    def local(self, local_id: str) -> StreamState | None:
        return self._by_local.get(local_id)

    def find(self, peer: str, wire_id: str, *, ours: bool) -> StreamState | None:
        """The stream `peer` means by `wire_id`: one we opened (`ours`) or one it opened."""
        return self._by_key.get((peer, wire_id, ours))

    def __iter__(self) -> Iterator[StreamState]:
        return iter(list(self._by_local.values()))

    def __len__(self) -> int:
        return len(self._by_local)


@attrs.define(eq=False)
class PeerBudgets:
    """The stream bytes each peer has in flight from us, all its streams together, at most
    `limit`: a stream sends only with room in its peer's budget as well as its own credit."""

    limit: int = PEER_STREAM_BYTES
    peak: int = 0  # the most any peer ever had in flight
    _in_flight: dict[str, int] = attrs.field(factory=dict, init=False)
    _short: set[str] = attrs.field(factory=set, init=False)  # peers a stream found no room at

    def take(self, peer: str, cost: int) -> bool:
        """Take `cost` for a data frame to `peer`; False (nothing taken) without room."""
        used = self._in_flight.get(peer, 0) + cost
        if used > self.limit:
            self._short.add(peer)
            return False
        self._in_flight[peer] = used
        self.peak = max(self.peak, used)
        return True

    def give_back(self, peer: str, amount: int) -> bool:
        """`amount` of what `peer` had in flight is back; True when a stream found no room
        since the last give-back (so streams to it should look again)."""
        left = self._in_flight[peer] - amount
        if left:
            self._in_flight[peer] = left
        else:
            del self._in_flight[peer]
        short = peer in self._short
        self._short.discard(peer)
        return short

    def in_flight(self) -> dict[str, int]:
        """Bytes in flight by peer (peers with none left out)."""
        return dict(self._in_flight)
