"""The broker's replay memory: a signed hello is admitted once (docs/protocol.md, "Broker")."""

import heapq
import ipaddress
from typing import Final

import attrs

from meshactors.wire.broker import MAX_CLOCK_SKEW_MS, HelloRejected, RejectReason, VerifiedHello

NONCE_CACHE_ENTRIES: Final = 100_000  # replay memory bound (~60 s of hellos at ~800/s)
IPV6_SOURCE_PREFIX: Final = 64  # one IPv6 source is a /64: one host can hold a whole one

_Key = tuple[str, str]  # (device id, nonce)
_Entry = tuple[int, _Key]  # (expiry in ms, key): heaps order by expiry


def source_of(host: str) -> str:
    """The source a hello from `host` is counted against: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


@attrs.define
class NonceCache:
    """Remembers each (device, nonce) for as long as its hello could still pass the clock check.

    Bounded, and shared fairly among sources (client addresses): when it is full of live
    entries, a hello from a source holding fewer entries than the source holding the most takes
    the place of that source's entry that expires first; a hello from a source holding the most
    is refused (broker_busy). So a source that fills the memory loses its own entries, not
    anyone else's: forgetting one early reopens a replay window, here only for its own hellos.
    """

    capacity: int = NONCE_CACHE_ENTRIES
    evicted: int = attrs.field(init=False, default=0)  # entries forgotten early for a fair share
    _expiry: dict[_Key, tuple[int, str]] = attrs.field(init=False, factory=dict)
    _heap: list[_Entry] = attrs.field(init=False, factory=list)  # live, and evicted till expiry
    _by_source: dict[str, list[_Entry]] = attrs.field(init=False, factory=dict)  # live only
    _sources_holding: dict[int, set[str]] = attrs.field(init=False, factory=dict)  # by count
    _most: int = attrs.field(init=False, default=0)  # entries of the source holding the most

    def admit(self, hello: VerifiedHello, *, source: str, now_ms: int) -> None:
        """Record the hello's nonce for `source`; raise HelloRejected if seen before or if the
        memory is full and `source` holds the most of it."""
        self._expire(now_ms)
        key = (hello.device_id, hello.nonce)
        if key in self._expiry:
            raise HelloRejected(RejectReason.REPLAYED_NONCE)
        if len(self._expiry) >= self.capacity:
            if len(self._by_source.get(source, ())) >= self._most:
                raise HelloRejected(RejectReason.BROKER_BUSY, "nonce cache full")
            self._evict(next(iter(self._sources_holding[self._most])))
        expiry = hello.ts_ms + MAX_CLOCK_SKEW_MS
        self._expiry[key] = (expiry, source)
        heapq.heappush(self._heap, (expiry, key))
        held = self._by_source.setdefault(source, [])
        heapq.heappush(held, (expiry, key))
        self._count(source, len(held) - 1, len(held))

    def _expire(self, now_ms: int) -> None:
        """Forget the entries whose hello is now stale (and evicted ones passing by)."""
        while self._heap and self._heap[0][0] < now_ms:
            expiry, key = heapq.heappop(self._heap)
            entry = self._expiry.get(key)
            if entry is None or entry[0] != expiry:
                continue  # evicted earlier
            del self._expiry[key]
            self._forget_first(entry[1])
        if len(self._heap) > 2 * self.capacity:  # evicted entries piled up: keep the live ones
            self._heap = [(expiry, key) for key, (expiry, _) in self._expiry.items()]
            heapq.heapify(self._heap)

    def _evict(self, source: str) -> None:
        """Forget `source`'s entry that expires first, to make room for another source."""
        _, key = self._forget_first(source)
        del self._expiry[key]
        self.evicted += 1

    def _forget_first(self, source: str) -> _Entry:
        """Drop `source`'s entry that expires first from its own heap and the counts."""
        held = self._by_source[source]
        first = heapq.heappop(held)
        if not held:
            del self._by_source[source]
        self._count(source, len(held) + 1, len(held))
        return first

    def _count(self, source: str, before: int, after: int) -> None:
        """Move `source` between the sets of sources by how many entries they hold."""
        if before:
            holding = self._sources_holding[before]
            holding.discard(source)
            if not holding:
                del self._sources_holding[before]
                if self._most == before:
                    self._most = after
        if after:
            self._sources_holding.setdefault(after, set()).add(source)
            self._most = max(self._most, after)

    def __len__(self) -> int:
        return len(self._expiry)
