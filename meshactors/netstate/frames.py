"""Peer frames of the replicated state map (feature `state`; a peer without it is sent none).

`state_put` carries writes as they are made; `state_summary`, `state_pull` and `state_page`
are the catch-up: each side of a pair that becomes active sends its summary (a digest per
bucket of keys), the other pulls the buckets that differ, one bounded page at a time.
"""

from __future__ import annotations

from typing import Any

import attrs

from meshactors.netstate.entry import BUCKETS, BadEntry, Entry, check_key
from meshactors.netstate.hlc import Stamp
from meshactors.netstate.statemap import SUMMARY_CHARS
from meshactors.wire.device_id import is_device_id
from meshactors.wire.peer import Frame, register_frame

FEATURE = "state"
MAX_PAGE_ENTRIES = 256  # entries in one state_put or state_page
MAX_PAGE_BYTES = 128 * 1024  # those entries as a frame encodes them (Entry.wire_size, text
# ASCII-escaped), after the first: a page stays well within MAX_PEER_FRAME_BYTES
MAX_PULL_ID = 2**62
_HEX = frozenset("0123456789abcdef")


def _key(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    check_key(value)


def _author(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not is_device_id(value):
        raise ValueError("by must be a device id")


def _tombstone_value(instance: Any, _attribute: attrs.Attribute[bool], value: bool) -> None:
    if value and instance.value is not None:
        raise ValueError("a tombstone carries a null value")


@attrs.frozen
class WireEntry:
    """An entry as it travels: its value as JSON (checked against the limits when merged)."""

    key: str = attrs.field(validator=_key)
    value: Any
    deleted: bool = attrs.field(validator=_tombstone_value)
    wall: int
    counter: int
    by: str = attrs.field(validator=_author)

    @classmethod
    def of(cls, entry: Entry) -> WireEntry:
        """An entry of the map, to send."""
        return cls(
            entry.key, entry.value, entry.deleted, entry.stamp.wall, entry.stamp.counter, entry.by
        )

    def entry(self) -> Entry:
        """The entry to merge (BadEntry: a value or stamp past the limits)."""
        stamp = Stamp(self.wall, self.counter)
        if not stamp.valid():
            raise BadEntry("bad_stamp", f"stamp {self.wall}.{self.counter} out of range")
        if self.deleted:
            return Entry.tombstone(self.key, stamp, self.by)
        return Entry.write(self.key, self.value, stamp, self.by)


def _page_length(
    _instance: object, _attribute: attrs.Attribute[list[WireEntry]], value: list[WireEntry]
) -> None:
    if len(value) > MAX_PAGE_ENTRIES:
        raise ValueError(f"at most {MAX_PAGE_ENTRIES} entries")


def _some(
    _instance: object, _attribute: attrs.Attribute[list[WireEntry]], value: list[WireEntry]
) -> None:
    if not value:
        raise ValueError("at least one entry")


def _summary(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) != SUMMARY_CHARS or not _HEX.issuperset(value):
        raise ValueError(f"a summary is {SUMMARY_CHARS} lowercase hex digits")


def _pull_id(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value < MAX_PULL_ID:
        raise ValueError("pull id out of range")


def _buckets(_instance: object, _attribute: attrs.Attribute[list[int]], value: list[int]) -> None:
    if not 0 < len(value) <= BUCKETS or len(set(value)) != len(value):
        raise ValueError(f"1-{BUCKETS} distinct buckets")
    if not all(0 <= bucket < BUCKETS for bucket in value):
        raise ValueError(f"a bucket is 0-{BUCKETS - 1}")


def _cursor(_instance: object, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        check_key(value)


class _StateFrame(Frame):
    """A state frame: a peer without the feature is sent nothing instead."""

    def downgrade(self) -> list[Frame]:
        return []


@register_frame("state_put", app=True, feature=FEATURE)
@attrs.frozen
class StatePut(_StateFrame):
    """Writes the sender made (each `by` the sender)."""

    entries: list[WireEntry] = attrs.field(validator=[_some, _page_length])


@register_frame("state_summary", app=True, feature=FEATURE)
@attrs.frozen
class StateSummary(_StateFrame):
    """The sender's bucket digests; with `ask` the receiver answers with its own."""

    digests: str = attrs.field(validator=_summary)
    ask: bool = False


@register_frame("state_pull", app=True, feature=FEATURE)
@attrs.frozen
class StatePull(_StateFrame):
    """Ask for the next page of `buckets`' entries with keys after `after`."""

    pull: int = attrs.field(validator=_pull_id)
    buckets: list[int] = attrs.field(validator=_buckets)
    after: str | None = attrs.field(default=None, validator=_cursor)


@register_frame("state_page", app=True, feature=FEATURE)
@attrs.frozen
class StatePage(_StateFrame):
    """A page answering `state_pull` `pull`, in key order; `more` when another follows."""

    pull: int = attrs.field(validator=_pull_id)
    entries: list[WireEntry] = attrs.field(validator=_page_length)
    more: bool = False


def pages(entries: list[Entry]) -> list[list[WireEntry]]:
    """`entries` cut into pages within MAX_PAGE_ENTRIES and MAX_PAGE_BYTES (as encoded)."""
    cut: list[list[WireEntry]] = []
    size = 0
    for entry in entries:
        cost = entry.wire_size  # escapes the entry's text: once per entry
        if not cut or len(cut[-1]) == MAX_PAGE_ENTRIES or size + cost > MAX_PAGE_BYTES:
            cut.append([])
            size = 0
        cut[-1].append(WireEntry.of(entry))
        size += cost
    return cut
