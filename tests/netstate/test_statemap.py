"""The state map's merge: last writer wins, commutative, idempotent, and every delivery order
of the same writes ends in the same map and the same summary."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshactors.netstate import statemap
from meshactors.netstate.entry import MAX_VALUE_BYTES, BadEntry, Entry, canonical, check_key
from meshactors.netstate.hlc import Stamp
from meshactors.netstate.statemap import StateMap

DEVICES = ["a" * 52, "b" * 52, "c" * 52]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    key = draw(st.sampled_from(["a", "b", "c/d", "c/e"]))
    stamp = Stamp(draw(st.integers(0, 5)), draw(st.integers(0, 3)))
    by = draw(st.sampled_from(DEVICES))
    if draw(st.booleans()):
        return Entry.tombstone(key, stamp, by)
    return Entry.write(key, draw(values), stamp, by)


def _state(writes: list[Entry]) -> tuple[list[Entry], str]:
    merged = StateMap()
    for entry in writes:
        merged.merge(entry)
    return list(merged.entries()), merged.summary()


RELAXED = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@RELAXED
@given(
    st.lists(entries(), max_size=20).flatmap(lambda w: st.tuples(st.just(w), st.permutations(w)))
)
def test_every_delivery_order_converges(orders: tuple[list[Entry], list[Entry]]) -> None:
    writes, shuffled = orders
    assert _state(writes) == _state(shuffled)


@RELAXED
@given(st.lists(entries(), max_size=20))
def test_merging_twice_changes_nothing(writes: list[Entry]) -> None:
    once = _state(writes)
    assert _state(writes + writes) == once
    merged = StateMap()
    for entry in writes:
        merged.merge(entry)
    assert not any(merged.merge(entry) for entry in writes)


@given(entries(), entries())
def test_merge_is_commutative_and_keeps_the_higher_rank(a: Entry, b: Entry) -> None:
    assert _state([a, b]) == _state([b, a])
    if a.key == b.key:
        winner = max(a, b, key=lambda e: e.rank)
        assert _state([a, b])[0] == [winner]


@RELAXED
@given(st.lists(entries(), max_size=20), st.lists(entries(), max_size=20))
def test_summaries_differ_exactly_where_entries_differ(
    left: list[Entry], right: list[Entry]
) -> None:
    one, two = StateMap(), StateMap()
    for entry in left:
        one.merge(entry)
    for entry in right:
        two.merge(entry)
    for bucket in one.differing(two.summary()):
        page, _ = one.page([bucket], None, 100, 10**6)
        for entry in page:
            two.merge(entry)
        page, _ = two.page([bucket], None, 100, 10**6)
        for entry in page:
            one.merge(entry)
    assert one.summary() == two.summary()
    assert list(one.entries()) == list(two.entries())


def test_a_later_stamp_wins_and_the_author_breaks_ties() -> None:
    first = Entry.write("k", 1, Stamp(10, 0), DEVICES[2])
    later = Entry.write("k", 2, Stamp(10, 1), DEVICES[0])
    tie = Entry.write("k", 3, Stamp(10, 1), DEVICES[1])
    merged = StateMap()
    for entry in (later, first, tie):
        merged.merge(entry)
    assert merged.get("k") == tie
    gone = Entry.tombstone("k", Stamp(11, 0), DEVICES[0])
    merged.merge(gone)
    assert merged.get("k") == gone and merged.live("", None, 10, 10**6) == ([], False)
    assert merged.tombstones == 1 and len(merged) == 1


def test_pages_walk_the_buckets_in_key_order_within_their_bounds() -> None:
    merged = StateMap()
    for n in range(50):
        merged.merge(Entry.write(f"k{n:03d}", "x" * 10, Stamp(1, 0), DEVICES[0]))
    every = merged.differing("")
    got: list[str] = []
    after = None
    while True:
        page, more = merged.page(every, after, 7, 10**6)
        assert len(page) <= 7
        got += [entry.key for entry in page]
        if not more:
            break
        after = page[-1].key
    assert got == sorted(f"k{n:03d}" for n in range(50))
    one, more = merged.page(every, None, 100, 1)
    assert len(one) == 1 and more


def test_live_lists_by_prefix_after_a_cursor() -> None:
    merged = StateMap()
    for key in ("a", "b/1", "b/2", "b/3", "c"):
        merged.merge(Entry.write(key, key, Stamp(1, 0), DEVICES[0]))
    assert [e.key for e in merged.live("b/", None, 2, 10**6)[0]] == ["b/1", "b/2"]
    assert [e.key for e in merged.live("b/", "b/2", 5, 10**6)[0]] == ["b/3"]
    assert [e.key for e in merged.live("", "b/3", 5, 10**6)[0]] == ["c"]
    assert merged.live("b/", None, 5, 1) == ([merged.get("b/1")], True)  # the first fits


def test_keys_and_values_out_of_bounds_are_refused() -> None:
    for key in ("", "x" * 257, "a\nb", "\ud800"):
        try:
            check_key(key)
        except BadEntry as bad:
            assert bad.reason == "bad_key"
        else:
            raise AssertionError(key)
    try:  # 6,000 bytes as UTF-8, but as the frame carries it each é is `\u00e9`
        canonical("é" * 3000)
    except BadEntry as bad:
        assert bad.reason == "value_too_large"
        said = f"the value is 18002 bytes as ASCII-escaped JSON; the limit is {MAX_VALUE_BYTES}"
        assert str(bad) == said
    else:
        raise AssertionError("a value past the limit")
    nested: object = 1
    for _ in range(62):
        nested = [nested]
    try:
        canonical(nested)
    except BadEntry as bad:
        assert bad.reason == "bad_value"
    else:
        raise AssertionError("a value nested too deep")


def test_the_limits_hold_local_writes_and_leave_slack_for_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(statemap, "MAX_KEYS", 2)
    merged = StateMap()
    for key in ("a", "b"):
        merged.merge(Entry.write(key, 1, Stamp(1, 0), DEVICES[0]))
    third = Entry.write("c", 1, Stamp(1, 0), DEVICES[0])
    assert merged.fits(Entry.write("a", 2, Stamp(2, 0), DEVICES[0]))  # an existing key
    assert not merged.fits(third)
    assert merged.fits(third, slack=statemap.MERGE_SLACK)


def test_a_map_peers_took_past_the_limits_refuses_only_growth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Peers' writes (within MERGE_SLACK) left 3 keys of 4 bytes each where 2 keys and 8 bytes
    # are the limits: a local write may still delete or rewrite what is held, no more.
    monkeypatch.setattr(statemap, "MAX_KEYS", 2)
    monkeypatch.setattr(statemap, "MAX_STATE_BYTES", 8)
    over = StateMap()
    for key in ("a", "b", "c"):
        assert over.fits(Entry.write(key, "x", Stamp(1, 0), DEVICES[1]), slack=2)
        over.merge(Entry.write(key, "x", Stamp(1, 0), DEVICES[1]))  # "a" + '"x"': 4 bytes
    later = Stamp(2, 0)
    assert over.fits(Entry.tombstone("a", later, DEVICES[0]))
    assert over.fits(Entry.write("b", "y", later, DEVICES[0]))  # the same size
    assert over.fits(Entry.write("c", 1, later, DEVICES[0]))  # smaller
    assert not over.fits(Entry.write("c", "xy", later, DEVICES[0]))  # one byte more
    assert not over.fits(Entry.write("d", 1, later, DEVICES[0]))  # a new key
    assert not over.fits(Entry.tombstone("d", later, DEVICES[0]))  # its tombstone counts too
    one_byte = StateMap()
    one_byte.merge(Entry.write("k", 1, Stamp(1, 0), DEVICES[1]))
    one_byte.merge(Entry.write("l", 1234, Stamp(1, 0), DEVICES[1]))  # 2 + 5 bytes: 7 of 8
    assert one_byte.fits(Entry.tombstone("k", later, DEVICES[0]))  # 'null' adds 3: a delete


@RELAXED
@given(st.lists(entries(), max_size=12), st.lists(entries(), min_size=1, max_size=8))
def test_undoing_our_unsaved_writes_restores_the_map_they_found(
    before: list[Entry], ours: list[Entry]
) -> None:
    # A batch of our writes whose save failed is taken back, last first, as the replica does.
    found = StateMap()
    for entry in before:
        found.merge(entry)
    undone = StateMap()
    for entry in before:
        undone.merge(entry)
    merged: list[tuple[Entry, Entry | None]] = []
    for entry in ours:
        previous = undone.get(entry.key)
        if undone.merge(entry):
            merged.append((entry, previous))
    assert all(undone.undo(entry, previous) for entry, previous in reversed(merged))
    assert list(undone.entries()) == list(found.entries())
    assert undone.summary() == found.summary()
    assert (undone.bytes, undone.tombstones, len(undone)) == (
        found.bytes,
        found.tombstones,
        len(found),
    )


def test_undo_leaves_a_newer_entry_alone() -> None:
    held = StateMap()
    ours = Entry.write("k", 1, Stamp(1, 0), DEVICES[0])
    newer = Entry.write("k", 2, Stamp(2, 0), DEVICES[1])
    held.merge(ours)
    held.merge(newer)
    assert not held.undo(ours, None)
    assert held.get("k") is newer


def _held(writes: list[Entry]) -> StateMap:
    held = StateMap()
    for entry in writes:
        held.merge(entry)
    return held


@RELAXED
@given(
    st.lists(entries(), max_size=20).flatmap(lambda w: st.tuples(st.just(w), st.permutations(w))),
    st.integers(0, 6),
)
def test_pruning_leaves_the_map_of_the_survivors_whatever_the_order(
    orders: tuple[list[Entry], list[Entry]], horizon: int
) -> None:
    # Writes that reached every device before their tombstones expired: each device prunes
    # by the same rule and holds the same map, as if the expired tombstones had never been.
    writes, shuffled = orders
    one, two = _held(writes), _held(shuffled)
    pruned = one.prune(horizon)
    two.prune(horizon)
    assert all(entry.deleted and entry.stamp.wall < horizon for entry in pruned)
    survivors = _held(list(one.entries()))
    assert _state(list(one.entries())) == _state(list(two.entries()))
    assert one.summary() == two.summary() == survivors.summary()
    assert (one.bytes, one.tombstones) == (survivors.bytes, survivors.tombstones)
    assert not any(e.deleted and e.stamp.wall < horizon for e in one.entries())


def test_a_tombstone_that_arrives_expired_ends_what_it_beats_and_is_not_kept() -> None:
    held = _held([Entry.write("a", 1, Stamp(1, 0), DEVICES[0])])
    assert held.merge(Entry.tombstone("a", Stamp(2, 0), DEVICES[1]), expired_before=5)
    assert (len(held), held.tombstones, held.summary()) == (0, 0, StateMap().summary())
    assert not held.merge(Entry.tombstone("b", Stamp(2, 0), DEVICES[1]), expired_before=5)
    assert len(held) == 0
    newer = Entry.write("c", 1, Stamp(9, 0), DEVICES[0])
    held.merge(newer)
    assert not held.merge(Entry.tombstone("c", Stamp(3, 0), DEVICES[1]), expired_before=5)
    assert held.get("c") is newer
    fresh = Entry.tombstone("d", Stamp(7, 0), DEVICES[1])
    assert held.merge(fresh, expired_before=5) and held.get("d") is fresh
