"""Ops for operators and tests only, answered when the daemon runs with `--debug-ops`."""

from __future__ import annotations

from typing import Any

import attrs

from meshactors.control.session import Session
from meshactors.ops.optable import Op
from meshactors.wire.ipc import ErrorCode, OpError


@attrs.frozen
class DebugCrashParams:
    """Params of `debug_crash`: the actor's path as `inspect` prints it."""

    path: str


async def debug_crash(session: Session, params: DebugCrashParams) -> dict[str, Any]:
    """Crash one running actor of the live tree, as a bug inside it would; its supervisor
    restarts it (or forgets it) by its restart type and strategy."""
    node = session.services.tree.find(params.path)
    if node is None:
        raise OpError(ErrorCode.NOT_FOUND, f"no actor at {params.path!r}")
    if not node.request_crash(f"debug_crash by {session.client_id}"):
        raise OpError(
            ErrorCode.CONFLICT,
            f"{params.path} is {node.state.value}"
            + ("" if node.parent is not None else " and has no supervisor (the root)")
            + ": only a running supervised actor can be crashed",
        )
    return {"path": node.path, "kind": node.kind, "crashed": True}


OPS: list[Op[Any]] = [
    Op("debug_crash", DebugCrashParams, debug_crash, "crash an actor of the tree (--debug-ops)"),
]
