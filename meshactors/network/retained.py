"""Retained channel values: a sans-IO store, bounded by count and bytes, that `channels` owns
and tests drive without sockets."""

from __future__ import annotations

import collections

import attrs

from meshactors.network.payload import Payload

RETAINED_MAX_VALUES = 1024  # retained values kept per network, received and own, each
RETAINED_MAX_BYTES = 8 * 1024 * 1024  # their payloads as JSON, received and own, each
RETAINED_SENDER_SHARE = 4  # one sender holds at most 1/4 of the received values and bytes


@attrs.define(eq=False)
class _Group:
    """The keys that share a first part (a received value's sender), oldest first, and their
    bytes."""

    keys: collections.OrderedDict[tuple[str, str], None] = attrs.field(
        factory=collections.OrderedDict
    )
    bytes: int = 0


@attrs.define(eq=False)
class RetainedStore:
    """Last values by key, bounded by count and bytes; the oldest is evicted first. With
    `max_share` above 1, the keys of one first part hold at most 1/max_share of the values
    and of the bytes, their own oldest evicted first, so one sender cannot push out the rest."""

    max_values: int = RETAINED_MAX_VALUES
    max_bytes: int = RETAINED_MAX_BYTES
    max_share: int = 1
    _values: collections.OrderedDict[tuple[str, str], Payload] = attrs.field(
        factory=collections.OrderedDict
    )
    _groups: dict[str, _Group] = attrs.field(factory=dict)
    bytes: int = 0

    def put(self, key: tuple[str, str], payload: Payload) -> None:
        """Keep `payload` as the value of `key`, evicting the oldest values past the limits."""
        self.pop(key)
        self._values[key] = payload
        self.bytes += payload.size
        group = self._groups.setdefault(key[0], _Group())
        group.keys[key] = None
        group.bytes += payload.size
        while self._over_share(group):
            self.pop(next(iter(group.keys)))
        while len(self._values) > self.max_values or self.bytes > self.max_bytes:
            self.pop(next(iter(self._values)))

    def _over_share(self, group: _Group) -> bool:
        """Whether `group` holds more than its share of the values or the bytes."""
        return self.max_share > 1 and (
            len(group.keys) * self.max_share > self.max_values
            or group.bytes * self.max_share > self.max_bytes
        )

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
        if old is None:
            return
        self.bytes -= old.size
        group = self._groups[key[0]]
        del group.keys[key]
        group.bytes -= old.size
        if not group.keys:
            del self._groups[key[0]]

    def items(self) -> list[tuple[tuple[str, str], Payload]]:
        """Every (key, value), oldest first."""
        return list(self._values.items())

    def __len__(self) -> int:
        return len(self._values)


def received_store() -> RetainedStore:
    """A store for values received from peers, keyed (sender, channel): each sender holds at
    most its share."""
    return RetainedStore(max_share=RETAINED_SENDER_SHARE)
