"""The broker's replay memory: a signed hello is admitted once (docs/protocol.md, "Broker")."""

import heapq
from typing import Final

import attrs

from meshactors.wire.broker import MAX_CLOCK_SKEW_MS, HelloRejected, RejectReason, VerifiedHello

NONCE_CACHE_ENTRIES: Final = 100_000  # replay memory bound (~60 s of hellos at ~800/s)


@attrs.define
class NonceCache:
    """Remembers each (device, nonce) for as long as its hello could still pass the clock check.

    Bounded: when full of live entries it refuses new hellos (broker_busy) rather than forget
    a nonce early, which would reopen the replay window.
    """

    capacity: int = NONCE_CACHE_ENTRIES
    _expiry: dict[tuple[str, str], int] = attrs.field(init=False, factory=dict)
    _heap: list[tuple[int, tuple[str, str]]] = attrs.field(init=False, factory=list)

    def admit(self, hello: VerifiedHello, *, now_ms: int) -> None:
        """Record the hello's nonce; raise HelloRejected if seen before or if memory is full."""
        while self._heap and self._heap[0][0] < now_ms:
            _, expired = heapq.heappop(self._heap)
            del self._expiry[expired]
        key = (hello.device_id, hello.nonce)
        if key in self._expiry:
            raise HelloRejected(RejectReason.REPLAYED_NONCE)
        if len(self._expiry) >= self.capacity:
            raise HelloRejected(RejectReason.BROKER_BUSY, "nonce cache full")
        expiry = hello.ts_ms + MAX_CLOCK_SKEW_MS
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))

    def __len__(self) -> int:
        return len(self._expiry)
