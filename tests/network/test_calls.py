"""The call table's sans-IO parts without sockets or a clock: deadlines come due in order and
stay bounded, and served calls are found by either id until forgotten."""

from __future__ import annotations

import functools
import math

import attrs

from meshactors.network.calls import EXPIRY_SLACK, DeadlineHeap, ServedCalls


def test_deadlines_come_due_earliest_first_and_only_once() -> None:
    heap = DeadlineHeap()
    assert heap.next_deadline() == math.inf
    for deadline, call_id in [(3.0, "c"), (1.0, "a"), (2.0, "b")]:
        heap.add(deadline, call_id, 3, list)
    assert heap.next_deadline() == 1.0
    assert heap.due(2.0) == ["a", "b"]
    assert heap.due(2.0) == []
    assert heap.next_deadline() == 3.0
    assert heap.due(10.0) == ["c"]


def test_finished_calls_do_not_pile_up_in_the_heap() -> None:
    heap = DeadlineHeap()
    for n in range(10 * EXPIRY_SLACK):  # every call finishes before the next starts
        in_flight = [(float(n), f"c{n}")]
        heap.add(float(n), f"c{n}", 1, functools.partial(list, in_flight))
        assert len(heap) <= 2 * 1 + EXPIRY_SLACK + 1
    assert heap.due(math.inf)[-1] == f"c{10 * EXPIRY_SLACK - 1}"


@attrs.define
class Call:
    id: str
    caller: str
    remote_id: str


def test_served_calls_are_found_by_our_id_and_by_the_callers() -> None:
    table: ServedCalls[Call] = ServedCalls()
    first, second = Call("s1", "dev-a", "r1"), Call("s2", "dev-b", "r1")
    table.add(first)
    table.add(second)
    assert table.get("s1") is first and "s2" in table and len(table) == 2
    assert table.from_caller("dev-b", "r1") is second
    assert table.from_caller("dev-a", "r2") is None


def test_forgetting_a_served_call_clears_both_indexes_once() -> None:
    table: ServedCalls[Call] = ServedCalls()
    call = Call("s1", "dev-a", "r1")
    table.add(call)
    for call_in_walk in table.calls():
        table.forget(call_in_walk)
    table.forget(call)
    assert table.get("s1") is None and table.from_caller("dev-a", "r1") is None
    assert len(table) == 0 and table.calls() == []
