"""Retained channel values: a sans-IO store, bounded by count and bytes, that `channels` owns
and tests drive without sockets."""

from __future__ import annotations

import collections

import attrs

from meshactors.network.payload import Payload

RETAINED_MAX_VALUES = 1024  # retained values kept per network, received and own, each
RETAINED_MAX_BYTES = 8 * 1024 * 1024  # their payloads as JSON, received and own, each


@attrs.define(eq=False)
class RetainedStore:
    """Last values by key, bounded by count and bytes; the oldest is evicted first."""

    max_values: int = RETAINED_MAX_VALUES
    max_bytes: int = RETAINED_MAX_BYTES
    _values: collections.OrderedDict[tuple[str, str], Payload] = attrs.field(
        factory=collections.OrderedDict
    )
    bytes: int = 0

    def put(self, key: tuple[str, str], payload: Payload) -> None:
        """Keep `payload` as the value of `key`, evicting the oldest values past the limits."""
        self.pop(key)
        self._values[key] = payload
        self.bytes += payload.size
        while len(self._values) > self.max_values or self.bytes > self.max_bytes:
            _, oldest = self._values.popitem(last=False)
            self.bytes -= oldest.size

    def get(self, key: tuple[str, str]) -> Payload | None:
        """The value of `key`, if any."""
        return self._values.get(key)

    def restore(self, key: tuple[str, str], previous: Payload | None) -> None:
        """Put back what `get(key)` gave before a change: that value, or nothing."""
        if previous is None:
            self.pop(key)
        else:
            self.put(key, previous)

    def pop(self, key: tuple[str, str]) -> None:
        """Forget the value of `key`, if any."""
        old = self._values.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def items(self) -> list[tuple[tuple[str, str], Payload]]:
        """Every (key, value), oldest first."""
        return list(self._values.items())

    def __len__(self) -> int:
        return len(self._values)
