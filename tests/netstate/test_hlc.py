"""The hybrid logical clock: stamps only move forward, past every stamp seen."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshactors.netstate.hlc import MAX_COUNTER, HybridClock, Stamp

stamps = st.builds(Stamp, st.integers(0, 2**45), st.integers(0, MAX_COUNTER - 1))
steps = st.lists(
    st.one_of(st.tuples(st.just("tick"), st.integers(0, 2**45)), st.tuples(st.just("see"), stamps)),
    max_size=60,
)


@given(steps)
def test_ticks_increase_and_follow_every_stamp_seen(script: list[tuple[str, object]]) -> None:
    clock = HybridClock()
    previous = Stamp(0, 0)
    seen = Stamp(0, 0)
    for action, arg in script:
        if action == "see":
            assert isinstance(arg, Stamp)
            clock.observe(arg)
            seen = max(seen, arg)
            continue
        assert isinstance(arg, int)
        stamp = clock.tick(arg)
        assert stamp > previous and stamp > seen and stamp.valid()
        assert stamp.wall >= arg
        previous = seen = stamp


@given(stamps, st.integers(0, 2**45))
def test_a_tick_passes_the_entry_it_replaces(after: Stamp, now: int) -> None:
    assert HybridClock().tick(now, after) > after


def test_the_wall_clock_wins_when_it_is_ahead() -> None:
    clock = HybridClock(Stamp(100, 7))
    assert clock.tick(200) == Stamp(200, 0)
    assert clock.tick(150) == Stamp(200, 1)


def test_a_full_counter_borrows_the_next_millisecond() -> None:
    assert HybridClock(Stamp(5, MAX_COUNTER - 1)).tick(0) == Stamp(6, 0)
