"""State frames from a peer: whatever bytes arrive, decoding either refuses them (BadPeerFrame)
or gives frames whose entries merge or are refused alone (BadEntry), never anything else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshactors.netstate.entry import BUCKETS, MAX_KEY_BYTES, MAX_VALUE_BYTES, BadEntry, Entry
from meshactors.netstate.frames import (
    FEATURE,
    MAX_PAGE_BYTES,
    MAX_PAGE_ENTRIES,
    MAX_PULL_ID,
    StatePage,
    StatePull,
    StatePut,
    StateSummary,
    WireEntry,
    pages,
)
from meshactors.netstate.hlc import MAX_COUNTER, MAX_WALL_MS, Stamp
from meshactors.netstate.statemap import StateMap
from meshactors.wire.peer import (
    MAX_PEER_FRAME_BYTES,
    BadPeerFrame,
    decode_frame,
    encode_for,
    encode_frame,
)

DEVICE = "a" * 52
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
entry_fields = st.fixed_dictionaries(
    {},
    optional={
        "key": st.one_of(st.text(max_size=300), json_values),
        "value": json_values,
        "deleted": st.one_of(st.booleans(), json_values),
        "wall": st.one_of(st.integers(-(2**64), 2**64), json_values),
        "counter": st.one_of(st.integers(-(2**40), 2**40), json_values),
        "by": st.one_of(st.just(DEVICE), st.text(max_size=60)),
        "extra": json_values,
    },
)
near_valid = st.fixed_dictionaries(
    {
        "key": st.text(max_size=300),
        "value": json_values,
        "deleted": st.booleans(),
        "wall": st.integers(-1, 2**54),
        "counter": st.integers(-1, 2**32),
        "by": st.just(DEVICE),
    }
)
frames = st.fixed_dictionaries(
    {"t": st.sampled_from(["state_put", "state_summary", "state_pull", "state_page"])},
    optional={
        "entries": st.one_of(
            st.lists(near_valid, max_size=4), st.lists(entry_fields, max_size=4), json_values
        ),
        "digests": st.one_of(
            st.text("0123456789abcdef", min_size=4096, max_size=4096), json_values
        ),
        "ask": json_values,
        "pull": st.one_of(st.integers(-5, 2**63), json_values),
        "buckets": st.one_of(st.lists(st.integers(-3, 300), max_size=5), json_values),
        "after": st.one_of(st.text(max_size=10), json_values),
        "more": json_values,
    },
)


def _bytes(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(frames)
def test_any_state_frame_is_refused_or_merges_safely(fields: dict[str, Any]) -> None:
    held = StateMap()
    held.merge(Entry.write("k", 1, Stamp(1, 0), DEVICE))
    try:
        frame = decode_frame(_bytes(fields))
    except BadPeerFrame:
        return
    match frame:
        case StatePut(entries=entries) | StatePage(entries=entries):
            for wire in entries:
                with contextlib.suppress(BadEntry):
                    held.merge(wire.entry())
        case StateSummary(digests=digests):
            assert all(0 <= bucket < BUCKETS for bucket in held.differing(digests))
        case StatePull(buckets=buckets, after=after):
            held.page(buckets, after, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
        case _:
            raise AssertionError(f"not a state frame: {frame!r}")


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), json_values), max_size=20))
def test_entries_survive_the_wire_and_pages_stay_in_bounds(items: list[tuple[str, Any]]) -> None:
    written = []
    for n, (key, value) in enumerate(items):
        try:
            written.append(Entry.write(key, value, Stamp(n, n), DEVICE))
        except BadEntry:
            continue
    for page in pages(written):
        assert 0 < len(page) <= MAX_PAGE_ENTRIES
        decoded = decode_frame(encode_frame(StatePut(page)))
        assert isinstance(decoded, StatePut)
        for received, sent in zip(decoded.entries, page, strict=True):
            assert received.entry() == sent.entry()


def test_a_page_cut_keeps_to_its_byte_bound() -> None:
    big = [Entry.write(f"k{n}", "x" * 16_000, Stamp(1, 0), DEVICE) for n in range(20)]
    cut = pages(big)
    assert [len(page) for page in cut] == [8, 8, 4]
    assert all(isinstance(page[0], WireEntry) for page in cut)


WIDE_CHARS = 'aé€😀"\\'  # one byte to 4 in UTF-8, up to 12 (a surrogate pair) escaped


@attrs.frozen
class WideWrites:
    """`count` writes within the client limits, keys of `repeat` times `char` then a number,
    each the same `value` (a tombstone when None) and stamp."""

    count: int
    char: str
    repeat: int
    value: str | None
    stamp: Stamp

    def entries(self) -> list[Entry]:
        """The writes."""
        keys = [self.char * self.repeat + str(n) for n in range(self.count)]
        if self.value is None:
            return [Entry.tombstone(key, self.stamp, DEVICE) for key in keys]
        return [Entry.write(key, self.value, self.stamp, DEVICE) for key in keys]


@st.composite
def wide_writes(draw: st.DrawFn) -> WideWrites:
    """Up to 300 writes with keys of the characters that grow most when a frame ASCII-escapes
    them, and values of any size up to MAX_VALUE_BYTES."""
    char = draw(st.sampled_from(WIDE_CHARS))
    repeat = draw(st.integers(1, (MAX_KEY_BYTES - 3) // len(char.encode("utf-8"))))
    value_char = draw(st.sampled_from(WIDE_CHARS))
    value = draw(st.none() | st.integers(0, MAX_VALUE_BYTES // 12 - 2).map(value_char.__mul__))
    stamp = Stamp(draw(st.integers(0, MAX_WALL_MS - 1)), draw(st.integers(0, MAX_COUNTER - 1)))
    return WideWrites(draw(st.integers(1, 300)), char, repeat, value, stamp)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(wide_writes())
@example(WideWrites(300, "é", 120, "v" * 198, Stamp(1_700_000_000_000, 0)))
def test_every_page_and_put_of_entries_within_the_limits_fits_a_peer_frame(
    writes: WideWrites,
) -> None:
    written = writes.entries()
    held = StateMap()
    for entry in written:
        held.merge(entry)
    for entry in written:  # the bound pages are cut by holds for each entry as encoded
        alone = len(encode_frame(StatePut([WireEntry.of(entry)]))) - len(
            '{"t":"state_put","entries":[]}'
        )
        assert alone < entry.wire_size
    for page in pages(written):
        assert len(encode_for(StatePut(page), [FEATURE])[0]) <= MAX_PEER_FRAME_BYTES
    got: list[str] = []
    after = None
    while True:
        found, more = held.page(range(BUCKETS), after, MAX_PAGE_ENTRIES, MAX_PAGE_BYTES)
        data = encode_for(
            StatePage(MAX_PULL_ID - 1, [WireEntry.of(e) for e in found], more), [FEATURE]
        )
        assert len(data) == 1 and len(data[0]) <= MAX_PEER_FRAME_BYTES
        decoded = decode_frame(data[0])
        assert isinstance(decoded, StatePage)
        got += [wire.key for wire in decoded.entries]
        if not more:
            break
        after = found[-1].key
    assert got == sorted(entry.key for entry in written)
