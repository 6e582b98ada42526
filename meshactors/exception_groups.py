"""Reading exception groups: nurseries wrap one failure in groups, callers want the failure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception inside a (possibly nested) exception group."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first  # type: ignore[return-value]  # the group's leaves are all E


@contextlib.contextmanager
def one_error_bare() -> Iterator[None]:
    """Raise the one exception of a group the block raises as itself (its own cause kept, the
    group shown as its context); a group of several as it is. A nursery's body and its tasks
    fail as callers expect: their error, not a group of one."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        alone = group.exceptions[0]
        raise alone  # noqa: B904  (its own cause stays; the group shows as context)
