"""The op table's in-order runs: consecutive requests of equal key run as one, each answered in
order with its own id, errors per request."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import attrs

from meshactors.actors import ActorGone, AskTimeout
from meshactors.ops.optable import Each, Merge, Op, OpTable
from meshactors.wire.ipc import ErrorCode, OpError, Request


@attrs.frozen
class NoteParams:
    """Params of the test op: `value` goes to `target`; `alone` runs it by itself."""

    target: str
    value: int
    alone: bool = False


@attrs.define
class Recorder:
    """What the test op's handlers were asked to do, and the answers, in order."""

    runs: list[tuple[str, list[int]]] = attrs.field(factory=list)
    answers: list[tuple[list[Any], Any]] = attrs.field(factory=list)

    def item(self, params: NoteParams) -> tuple[Hashable, int] | None:
        if params.value < 0:
            raise OpError(ErrorCode.INVALID_PARAMS, "negative")
        return None if params.alone else (params.target, params.value)

    async def run(self, _session: Any, params: NoteParams, values: list[int]) -> dict[str, Any]:
        if params.target == "gone":
            raise OpError(ErrorCode.NO_SUCH_PEER, "no such target")
        if params.target == "bug":
            raise RuntimeError("a bug")
        if params.target == "down":
            raise ActorGone("outbox: accept sends: the actor is not running")
        if params.target == "slow":
            raise AskTimeout("outbox: accept sends", 30.0)
        self.runs.append((params.target, values))
        return {"to": params.target, "count": len(values)}

    async def alone(self, _session: Any, params: NoteParams) -> dict[str, Any]:
        self.runs.append((params.target, [params.value]))
        return {"to": params.target, "count": 1}

    async def answer(self, requests: Sequence[Request], outcome: Any) -> None:
        shown = outcome.code.value if isinstance(outcome, OpError) else outcome
        self.answers.append(([request.id for request in requests], shown))


@attrs.frozen
class FakeSession:
    """What `_guarded` reads of a session when it logs a handler's bug."""

    client_id: str = "c1"


def _table(recorder: Recorder) -> OpTable:
    merge = Merge(recorder.item, recorder.run)
    return OpTable.of([Op("note", NoteParams, recorder.alone, "test op", merge)])


def _request(request_id: int, target: str, value: int, **extra: Any) -> Request:
    return Request(request_id, "note", {"target": target, "value": value, **extra})


async def _run(recorder: Recorder, requests: list[Request]) -> None:
    await _table(recorder).run_in_order(FakeSession(), requests, recorder.answer)  # type: ignore[arg-type]


async def test_consecutive_requests_of_one_key_run_once_and_are_answered_together() -> None:
    recorder = Recorder()
    await _run(recorder, [_request(n, "x", n) for n in range(1, 6)])
    assert recorder.runs == [("x", [1, 2, 3, 4, 5])]
    assert recorder.answers == [([1, 2, 3, 4, 5], {"to": "x", "count": 5})]


async def test_a_key_change_or_a_lone_request_ends_the_run_and_order_is_kept() -> None:
    recorder = Recorder()
    requests = [
        _request(1, "x", 1),
        _request(2, "x", 2),
        _request(3, "y", 3),
        _request(4, "y", 4, alone=True),
        _request(5, "y", 5),
        _request(6, "x", 6),
    ]
    await _run(recorder, requests)
    assert recorder.runs == [("x", [1, 2]), ("y", [3]), ("y", [4]), ("y", [5]), ("x", [6])]
    assert [ids for ids, _ in recorder.answers] == [[1, 2], [3], [4], [5], [6]]


async def test_a_bad_request_inside_a_run_is_answered_alone_in_its_place() -> None:
    recorder = Recorder()
    requests = [
        _request(1, "x", 1),
        _request(2, "x", -2),  # refused by the op's item check
        _request(3, "x", 3),
        Request(4, "note", {"target": "x", "value": "4"}),  # no coercion: invalid params
        Request(5, "nope", {}),  # unknown op
        _request(6, "x", 6),
    ]
    await _run(recorder, requests)
    assert recorder.runs == [("x", [1]), ("x", [3]), ("x", [6])]
    assert [(ids, outcome) for ids, outcome in recorder.answers] == [
        ([1], {"to": "x", "count": 1}),
        ([2], "invalid_params"),
        ([3], {"to": "x", "count": 1}),
        ([4], "invalid_params"),
        ([5], "unknown_op"),
        ([6], {"to": "x", "count": 1}),
    ]


async def test_a_failed_run_answers_each_of_its_requests_with_the_error() -> None:
    recorder = Recorder()
    requests = [_request(1, "gone", 1), _request(2, "gone", 2), _request(3, "bug", 3)]
    await _run(recorder, requests)
    assert recorder.answers == [([1, 2], "no_such_peer"), ([3], "internal")]


async def test_an_actor_that_is_down_or_slow_is_unavailable_or_a_timeout_not_a_bug() -> None:
    recorder = Recorder()
    await _run(recorder, [_request(1, "down", 1), _request(2, "slow", 2)])
    assert recorder.answers == [([1], "unavailable"), ([2], "timeout")]


async def test_a_run_with_one_outcome_each_answers_them_together_each_its_own() -> None:
    recorder = Recorder()
    calls: list[tuple[list[Any], Any]] = []

    async def run(_session: Any, params: NoteParams, values: list[int]) -> list[Any]:
        recorder.runs.append((params.target, values))
        return [OpError(ErrorCode.CONFLICT, "odd") if v % 2 else {"v": v} for v in values]

    async def answer(requests: Sequence[Request], outcome: Any) -> None:
        calls.append(([request.id for request in requests], outcome))

    op = Op("note", NoteParams, recorder.alone, "test op", Merge(recorder.item, run, each=True))
    requests = [_request(n, "x", n) for n in range(1, 5)]
    await OpTable.of([op]).run_in_order(FakeSession(), requests, answer)  # type: ignore[arg-type]
    assert recorder.runs == [("x", [1, 2, 3, 4])]
    [(ids, outcome)] = calls  # one answer for the run: its frames leave in one write
    assert ids == [1, 2, 3, 4]
    assert isinstance(outcome, Each)
    shown = [o.code.value if isinstance(o, OpError) else o for o in outcome.outcomes]
    assert shown == ["conflict", {"v": 2}, "conflict", {"v": 4}]
