"""One key of the replicated state map as every device keeps it: its value (or a tombstone),
the stamp of the write and the device that wrote it. The order of entries decides which
write wins, the same way on every device."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from meshactors.netstate.hlc import Stamp
from meshactors.wire.compact import json_size
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH, BadJson, check_json

MAX_KEY_BYTES = 256  # a key: 1-256 bytes of printable UTF-8
MAX_VALUE_BYTES = 16 * 1024  # a value as canonical JSON (ASCII-escaped)
MAX_VALUE_DEPTH = MAX_JSON_DEPTH - 3  # a peer frame holds a value 3 deeper (frame, list, entry)
BUCKETS = 256  # the summary of a map: one digest per bucket of keys
# An entry in a peer frame without its key, value, stamp numbers and author, plus the comma
# after it: `{key, value, deleted, wall, counter, by}` as frames.WireEntry encodes it.
_WIRE_FIELDS = len('{"key":,"value":,"deleted":false,"wall":,"counter":,"by":},')
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


class BadEntry(ValueError):
    """A key or value the state map does not take; `reason` is a stable counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_key(key: str) -> None:
    """BadEntry(`bad_key`) unless `key` is 1-MAX_KEY_BYTES bytes of printable UTF-8."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadEntry("bad_key", "a key must be UTF-8 text") from None
    if not 0 < size <= MAX_KEY_BYTES or not key.isprintable():
        raise BadEntry("bad_key", f"a key must be 1-{MAX_KEY_BYTES} bytes of printable text")


def canonical(value: Any) -> str:
    """`value` as canonical JSON (sorted keys, ASCII): the same text on every device, so the
    tie-break and the digests agree; BadEntry(`value_too_large`) past MAX_VALUE_BYTES."""
    try:
        check_json(value, MAX_VALUE_DEPTH)
        text = _CANONICAL.encode(value)
    except BadJson as bad:
        raise BadEntry("bad_value", bad.detail) from None
    except (TypeError, ValueError) as exc:
        raise BadEntry("bad_value", f"a value must be JSON: {exc}") from None
    if len(text) > MAX_VALUE_BYTES:
        raise BadEntry(
            "value_too_large",
            f"the value is {len(text)} bytes as ASCII-escaped JSON; the limit is {MAX_VALUE_BYTES}",
        )
    return text


def bucket_of(key: str) -> int:
    """The summary bucket a key falls in."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=1).digest()[0] % BUCKETS


@attrs.frozen
class Entry:
    """A key's last write: `value_json` (canonical JSON, `null` for a tombstone), `deleted`,
    the write's `stamp` and its author `by` (a device id)."""

    key: str
    value_json: str
    deleted: bool
    stamp: Stamp
    by: str

    @classmethod
    def write(cls, key: str, value: Any, stamp: Stamp, by: str) -> Entry:
        """A set of `key` to `value` (checked: BadEntry)."""
        check_key(key)
        return cls(key, canonical(value), False, stamp, by)

    @classmethod
    def tombstone(cls, key: str, stamp: Stamp, by: str) -> Entry:
        """A delete of `key` (checked: BadEntry)."""
        check_key(key)
        return cls(key, "null", True, stamp, by)

    @property
    def value(self) -> Any:
        """The value (None for a tombstone)."""
        return json.loads(self.value_json)

    @property
    def rank(self) -> tuple[int, int, str, bool, str]:
        """What orders two writes of a key: stamp, then author, then (for writes no honest
        device makes twice) the tombstone flag and value text, so the order is total."""
        return (self.stamp.wall, self.stamp.counter, self.by, self.deleted, self.value_json)

    @property
    def version(self) -> str:
        """The stamp as text that sorts like it: `WALL.COUNTER`, zero-padded."""
        return f"{self.stamp.wall:016d}.{self.stamp.counter:010d}"

    @property
    def size(self) -> int:
        """Bytes the entry counts against a network's state limit."""
        return len(self.key.encode("utf-8")) + len(self.value_json)

    @property
    def wire_size(self) -> int:
        """Bytes the entry takes at most in a peer frame, where text is ASCII-escaped (`é` is 6
        bytes there, 2 in `size`): pages are cut by it, so each fits in one frame."""
        texts = json_size(self.key) + len(self.value_json) + json_size(self.by)
        return texts + len(str(self.stamp.wall)) + len(str(self.stamp.counter)) + _WIRE_FIELDS

    @property
    def digest(self) -> int:
        """A 64-bit digest of everything that tells two entries apart (summaries xor them)."""
        text = "\0".join((self.key, *map(str, self.rank)))
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest())

    def beats(self, other: Entry | None) -> bool:
        """Whether this write wins over `other` (a write always wins over nothing)."""
        return other is None or self.rank > other.rank
