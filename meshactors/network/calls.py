"""Sans-IO parts of the call table that `rpc` owns: the deadlines of calls made from here and
the index of calls served here. Tests drive them without sockets, tasks or a clock."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

import attrs

EXPIRY_SLACK = 1024  # stale deadlines (of finished calls) kept beyond 2x those in flight


@attrs.define(eq=False)
class DeadlineHeap:
    """Ids by deadline (of calls; the peer table's, of peers whose status or detail events wait).
    Finished calls are not removed (that would cost a search): their entries are skipped when
    due, and the heap is rebuilt from the calls in flight once stale entries outnumber twice
    those plus `EXPIRY_SLACK`."""

    _heap: list[tuple[float, str]] = attrs.field(factory=list, init=False)

    def add(
        self,
        deadline: float,
        call_id: str,
        in_flight: int,
        live: Callable[[], Iterable[tuple[float, str]]],
    ) -> None:
        """Time `call_id` out at `deadline`. `in_flight` counts the calls still open, this one
        included; `live` lists their (deadline, id), called only when the heap is rebuilt."""
        if len(self._heap) > 2 * in_flight + EXPIRY_SLACK:
            self._heap = list(live())
            heapq.heapify(self._heap)
        else:
            heapq.heappush(self._heap, (deadline, call_id))

    def next_deadline(self) -> float:
        """The earliest deadline kept (math.inf when none)."""
        return self._heap[0][0] if self._heap else math.inf

    def due(self, now: float) -> list[str]:
        """Take the ids whose deadline is at or before `now`, earliest first (some may have
        finished already: the caller skips those)."""
        ids = []
        while self._heap and self._heap[0][0] <= now:
            ids.append(heapq.heappop(self._heap)[1])
        return ids

    def __len__(self) -> int:
        return len(self._heap)


class Served(Protocol):
    """A call served here: our id for it, and the caller's device and id."""

    @property
    def id(self) -> str: ...

    @property
    def caller(self) -> str: ...

    @property
    def remote_id(self) -> str: ...


C = TypeVar("C", bound=Served)


@attrs.define(eq=False)
class ServedCalls(Generic[C]):
    """Calls served here, by our id and by (caller, caller's id), the two kept in step."""

    _by_id: dict[str, C] = attrs.field(factory=dict, init=False)
    _by_caller: dict[tuple[str, str], C] = attrs.field(factory=dict, init=False)

    def add(self, call: C) -> None:
        """Keep `call` (its ids are not in the table yet: the caller checked)."""
        self._by_id[call.id] = call
        self._by_caller[(call.caller, call.remote_id)] = call

    def get(self, call_id: str) -> C | None:
        """The call served here under our id `call_id`."""
        return self._by_id.get(call_id)

    def from_caller(self, caller: str, remote_id: str) -> C | None:
        """The call `caller` made under its id `remote_id`."""
        return self._by_caller.get((caller, remote_id))

    def forget(self, call: C) -> None:
        """Drop `call` from both indexes (nothing if it is gone already)."""
        self._by_id.pop(call.id, None)
        self._by_caller.pop((call.caller, call.remote_id), None)

    def calls(self) -> list[C]:
        """Every call served here, a copy (safe to forget while walking it)."""
        return list(self._by_id.values())

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)
