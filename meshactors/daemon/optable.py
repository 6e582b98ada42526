"""The op table: each control-socket op's params class, handler and one-line summary."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import structlog

from meshactors.wire.ipc import ErrorCode, OpError, Request
from meshactors.wire.strict import describe_error, make_strict_converter

if TYPE_CHECKING:
    from meshactors.daemon.session import Session

P = TypeVar("P")

log = structlog.get_logger("meshactors.ops")

converter = make_strict_converter()


@attrs.frozen
class NoParams:
    """Params of an op that takes none: any key is rejected."""


@attrs.frozen
class Op(Generic[P]):
    """One op: validated params of type `params`, answered by `handler`."""

    name: str
    params: type[P]
    handler: Callable[[Session, P], Awaitable[Any]]
    summary: str


@attrs.define
class OpTable:
    """All ops the daemon answers, by name."""

    ops: dict[str, Op[Any]] = attrs.field(factory=dict)

    @classmethod
    def of(cls, *groups: Iterable[Op[Any]]) -> OpTable:
        """A table of the given op groups; an op name may appear only once."""
        table = cls()
        for group in groups:
            for op in group:
                if op.name in table.ops:
                    raise ValueError(f"op {op.name!r} defined twice")
                table.ops[op.name] = op
        return table

    def names(self) -> list[str]:
        """Op names, sorted, for the `version` op."""
        return sorted(self.ops)

    async def dispatch(self, session: Session, request: Request) -> Any:
        """Validate the request's params strictly and run its handler."""
        op = self.ops.get(request.op)
        if op is None:
            raise OpError(ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}")
        try:
            params = converter.structure(request.params, op.params)
        except Exception as exc:
            raise OpError(ErrorCode.INVALID_PARAMS, describe_error(exc)) from None
        return await op.handler(session, params)


async def run_request(session: Session, request: Request) -> Any:
    """Dispatch `request` on the session's op table; a handler's bug becomes an `internal` error."""
    try:
        return await session.services.ops.dispatch(session, request)
    except OpError:
        raise
    except Exception as exc:
        log.exception("op failed", op=request.op, client=session.client_id)
        raise OpError(ErrorCode.INTERNAL, f"{request.op} failed: {exc!r}") from exc


def unstructure(value: Any) -> Any:
    """Answer data as JSON-ready values (attrs instances become objects)."""
    return converter.unstructure(value)
