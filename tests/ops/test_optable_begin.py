"""`OpTable.begin`: a handler written as a plain function does its first part at once, in the
caller's task; errors at that point are OpErrors, a bug there becomes `internal`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import attrs
import pytest

from meshactors.ops.optable import Op, OpTable, finish
from meshactors.wire.ipc import ErrorCode, OpError, Request
from tests.ops.test_optable_runs import FakeSession


@attrs.frozen
class Step:
    """Params of the test ops."""

    name: str


@attrs.define
class Steps:
    """What the handlers did, in order."""

    done: list[str] = attrs.field(factory=list)

    def eager(self, _session: Any, params: Step) -> Awaitable[str]:
        if params.name == "refused":
            raise OpError(ErrorCode.NO_SUCH_PEER, "refused at once")
        if params.name == "bug":
            raise RuntimeError("a bug before the first wait")
        self.done.append(f"sent {params.name}")
        return self._rest(params.name)

    async def _rest(self, name: str) -> str:
        self.done.append(f"answered {name}")
        return name

    async def lazy(self, _session: Any, params: Step) -> str:
        self.done.append(f"ran {params.name}")
        return params.name


def _table(steps: Steps) -> OpTable:
    return OpTable.of(
        [Op("eager", Step, steps.eager, "plain function"), Op("lazy", Step, steps.lazy, "async")]
    )


SESSION: Any = FakeSession()


async def test_a_plain_function_handler_does_its_first_part_at_begin() -> None:
    steps = Steps()
    request = Request(1, "eager", {"name": "call"})
    work = _table(steps).begin(SESSION, request)
    assert steps.done == ["sent call"]  # before anything is awaited
    assert await finish(SESSION, request, work) == "call"
    assert steps.done == ["sent call", "answered call"]


async def test_an_async_handler_runs_nothing_until_awaited() -> None:
    steps = Steps()
    request = Request(1, "lazy", {"name": "x"})
    work = _table(steps).begin(SESSION, request)
    assert steps.done == []
    assert await finish(SESSION, request, work) == "x"
    assert steps.done == ["ran x"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"name": "refused"}, ErrorCode.NO_SUCH_PEER),
        ({"name": "bug"}, ErrorCode.INTERNAL),
        ({"nom": "typo"}, ErrorCode.INVALID_PARAMS),
    ],
)
def test_errors_before_the_first_wait_are_raised_by_begin(
    params: dict[str, Any], code: ErrorCode
) -> None:
    with pytest.raises(OpError) as raised:
        _table(Steps()).begin(SESSION, Request(1, "eager", params))
    assert raised.value.code is code
