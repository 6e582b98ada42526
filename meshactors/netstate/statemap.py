"""The replicated state map of one network, sans-IO: entries by key (tombstones included,
until they expire), last writer wins, and a summary of 256 bucket digests that tells two
devices which keys they disagree on."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Iterable

import attrs

from meshactors.netstate.entry import BUCKETS, Entry, bucket_of
from meshactors.wire.ipc import within_page_bytes

MAX_KEYS = 10_000  # keys per network, tombstones included, a local write may add one up to
MAX_STATE_BYTES = 16 * 1024 * 1024  # keys and values (as JSON) per network, the same way
MERGE_SLACK = 2  # writes merged from peers may take a map to twice those limits (two members
# writing at once, each within the limits, still converge); past that they are dropped and
# counted, in the order they arrive, so members may then differ (replica.py stops re-pulling)
TOMBSTONE_TTL_MS = 7 * 24 * 3600 * 1000  # a tombstone is kept this long after its stamp, then
# forgotten everywhere: a device away longer may bring back a key deleted meanwhile
DIGEST_CHARS = 16  # one bucket digest in a summary: 64 bits as hex
SUMMARY_CHARS = BUCKETS * DIGEST_CHARS


@attrs.define(eq=False)
class StateMap:
    """Entries by key, the keys in order, and the digest of each bucket (kept as entries
    change, so a summary costs nothing to make)."""

    _entries: dict[str, Entry] = attrs.field(factory=dict, init=False)
    _keys: list[str] = attrs.field(factory=list, init=False)  # sorted
    _buckets: dict[str, int] = attrs.field(factory=dict, init=False)  # each key's bucket
    _digests: list[int] = attrs.field(factory=lambda: [0] * BUCKETS, init=False)
    bytes: int = attrs.field(default=0, init=False)
    tombstones: int = attrs.field(default=0, init=False)
    changes: int = attrs.field(default=0, init=False)  # entries replaced, added or removed

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        """The entry of `key` (a tombstone too), if any."""
        return self._entries.get(key)

    def fits(self, entry: Entry, *, slack: int = 1) -> bool:
        """Whether the map may take `entry` within the limits (times `slack`). Only growth is
        refused: a new key (a tombstone too) past the key limit, more bytes past the byte
        limit. A delete of a key held, or a write that does not add bytes, always fits, so a
        map that peers' writes took past the limits (MERGE_SLACK) can still be trimmed."""
        old = self._entries.get(entry.key)
        if old is None:
            return (
                len(self._entries) < MAX_KEYS * slack
                and self.bytes + entry.size <= MAX_STATE_BYTES * slack
            )
        growth = entry.size - old.size
        return entry.deleted or growth <= 0 or self.bytes + growth <= MAX_STATE_BYTES * slack

    def merge(self, entry: Entry, expired_before: int = 0) -> bool:
        """Take `entry` if it beats the one held; True when the map changed. A tombstone
        stamped before `expired_before` (wall ms) has expired: it still ends what it beats,
        but the key is then gone rather than kept deleted."""
        old = self._entries.get(entry.key)
        if not entry.beats(old):
            return False
        if entry.deleted and entry.stamp.wall < expired_before:
            if old is None:
                return False
            self._replace(entry.key, old, None)
            return True
        self._replace(entry.key, old, entry)
        return True

    def prune(self, expired_before: int) -> list[Entry]:
        """Forget the tombstones stamped before `expired_before` (wall ms); the ones removed.
        Every device prunes by the same rule, so the summaries still agree."""
        expired = [
            entry
            for entry in self._entries.values()
            if entry.deleted and entry.stamp.wall < expired_before
        ]
        for entry in expired:
            self._replace(entry.key, entry, None)
        return expired

    def undo(self, entry: Entry, previous: Entry | None) -> bool:
        """Take back `entry`, a write of ours that could not be saved: its key holds
        `previous` (the entry it replaced, or nothing) again. Nothing changes when something
        newer replaced `entry` meanwhile; True when the map changed."""
        if self._entries.get(entry.key) is not entry:
            return False
        self._replace(entry.key, entry, previous)
        return True

    def _replace(self, key: str, old: Entry | None, new: Entry | None) -> None:
        """Swap the entry of `key` (`old`, held now, or none) for `new` (or none), keeping
        the keys, the digests and the counts."""
        self.changes += 1
        if old is None:
            bisect.insort(self._keys, key)
            bucket = self._buckets[key] = bucket_of(key)
        else:
            bucket = self._buckets[key]
            self._digests[bucket] ^= old.digest
            self.bytes -= old.size
            self.tombstones -= old.deleted
        if new is None:
            del self._entries[key], self._buckets[key]
            self._keys.pop(bisect.bisect_left(self._keys, key))
            return
        self._entries[key] = new
        self._digests[bucket] ^= new.digest
        self.bytes += new.size
        self.tombstones += new.deleted

    def live(
        self, prefix: str, after: str | None, limit: int, max_bytes: int
    ) -> tuple[list[Entry], bool]:
        """Entries that are not tombstones, keys starting with `prefix` and sorting after
        `after`, in key order, at most `limit` and (after the first) `max_bytes` of them
        (Entry.size); and whether either bound cut them short (more may follow)."""
        index = bisect.bisect_left(self._keys, prefix)
        if after is not None:
            index = max(index, bisect.bisect_right(self._keys, after))
        keys = itertools.takewhile(lambda key: key.startswith(prefix), self._keys[index:])
        live = (entry for entry in map(self._entries.__getitem__, keys) if not entry.deleted)
        sized = ((entry, entry.size) for entry in itertools.islice(live, limit))
        found, cut = within_page_bytes(sized, max_bytes)
        return found, cut or len(found) == limit

    def summary(self) -> str:
        """The bucket digests as one hex string (SUMMARY_CHARS)."""
        return "".join(f"{digest:016x}" for digest in self._digests)

    def differing(self, summary: str) -> list[int]:
        """The buckets whose digest differs from the one in a peer's `summary`."""
        return [
            bucket
            for bucket, digest in enumerate(self._digests)
            if summary[bucket * DIGEST_CHARS : (bucket + 1) * DIGEST_CHARS] != f"{digest:016x}"
        ]

    def page(
        self, buckets: Collection[int], after: str | None, max_entries: int, max_bytes: int
    ) -> tuple[list[Entry], bool]:
        """Entries of `buckets` with keys after `after`, in key order, at most `max_entries`
        and (after the first) `max_bytes` of them as a peer frame encodes them
        (Entry.wire_size); and whether more follow."""
        wanted = set(buckets)
        index = 0 if after is None else bisect.bisect_right(self._keys, after)
        found: list[Entry] = []
        size = 0
        for key in self._keys[index:]:
            if self._buckets[key] not in wanted:
                continue
            entry = self._entries[key]
            cost = entry.wire_size  # escapes the entry's text: once per entry
            if found and (len(found) == max_entries or size + cost > max_bytes):
                return found, True
            found.append(entry)
            size += cost
        return found, False

    def entries(self) -> Iterable[Entry]:
        """Every entry, tombstones included, in key order."""
        return (self._entries[key] for key in self._keys)
