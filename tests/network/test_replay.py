"""ReplayWindow: each counter accepted at most once, bounded reordering tolerated."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshactors.network.replay import REPLAY_WINDOW_SIZE, ReplayWindow

SMALL = 16  # a window small enough for hypothesis to push counters past its edge


def accept(window: ReplayWindow, counter: int) -> bool:
    """What the opener does after authenticating: take the counter if it is fresh."""
    if not window.check(counter):
        return False
    window.mark(counter)
    return True


def test_default_size_is_the_module_limit() -> None:
    assert ReplayWindow().size == REPLAY_WINDOW_SIZE == 1024


def test_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayWindow(size=0)


def test_a_counter_is_accepted_once() -> None:
    window = ReplayWindow()
    assert accept(window, 1)
    assert not accept(window, 1)
    assert window.highest == 1


def test_counter_zero_is_never_fresh() -> None:
    window = ReplayWindow()
    assert not window.check(0)
    accept(window, 5)
    assert not window.check(0)


def test_check_does_not_change_the_window() -> None:
    window = ReplayWindow()
    assert window.check(7)
    assert window.check(7)
    assert window.highest == 0


def test_marking_a_stale_counter_is_an_error() -> None:
    window = ReplayWindow()
    window.mark(3)
    with pytest.raises(ValueError, match="not fresh"):
        window.mark(3)


def test_reordered_counters_inside_the_window_are_accepted_once_each() -> None:
    window = ReplayWindow()
    order = [3, 1, 2, 6, 4, 5]
    assert [accept(window, c) for c in order] == [True] * 6
    assert [accept(window, c) for c in order] == [False] * 6
    assert window.highest == 6


def test_window_edge() -> None:
    window = ReplayWindow(size=SMALL)
    accept(window, 100)
    assert not window.check(100 - SMALL)  # just below the window: too old
    assert accept(window, 100 - SMALL + 1)  # the oldest counter still tracked


def test_jump_past_the_whole_window_forgets_everything_older() -> None:
    window = ReplayWindow(size=SMALL)
    for c in range(1, 10):
        accept(window, c)
    accept(window, 10 + 5 * SMALL)
    assert not window.check(9)
    assert accept(window, 10 + 4 * SMALL + 1)


def test_sliding_keeps_the_seen_bits_of_counters_still_inside() -> None:
    window = ReplayWindow(size=SMALL)
    accept(window, 10)
    accept(window, 15)
    assert not window.check(10)
    assert accept(window, 12)


@given(st.lists(st.integers(min_value=0, max_value=5 * SMALL), max_size=200))
def test_matches_a_set_model_and_accepts_each_counter_at_most_once(counters: list[int]) -> None:
    window = ReplayWindow(size=SMALL)
    seen: set[int] = set()
    highest = 0
    for c in counters:
        expected = c >= 1 and c not in seen and c > highest - SMALL
        assert accept(window, c) is expected
        if expected:
            seen.add(c)
            highest = max(highest, c)
    assert window.highest == highest


@given(
    st.integers(min_value=1, max_value=10_000),
    st.sampled_from([1, 2, SMALL, REPLAY_WINDOW_SIZE]),
    st.randoms(use_true_random=False),
)
def test_every_counter_within_the_window_is_accepted_once_in_any_order(
    base: int, size: int, rng: random.Random
) -> None:
    window = ReplayWindow(size=size)
    counters = list(range(base, base + size))
    rng.shuffle(counters)
    assert all(accept(window, c) for c in counters)
    assert not any(accept(window, c) for c in counters)
    assert window.highest == base + size - 1
