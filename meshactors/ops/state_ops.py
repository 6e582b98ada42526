"""Ops on a network's replicated key-value state: set, delete, get, list (docs/protocol.md,
"Replicated state"). Each asks the network's core, whose `state` part owns the map."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any

import attrs
import trio

from meshactors.actors import Pending
from meshactors.control.session import Session
from meshactors.ops.network_ops import network_of
from meshactors.ops.optable import Op
from meshactors.wire.ipc import DEFAULT_PAGE, ErrorCode, OpError

WRITE_TIMEOUT = 30.0  # seconds a write waits to be saved (the store's own call timeout)


@attrs.frozen
class StateSet:
    """Params of `state_set`: `value` is any JSON value."""

    network: str
    key: str
    value: Any


@attrs.frozen
class StateKey:
    """Params of `state_get` and `state_delete`."""

    network: str
    key: str


@attrs.frozen
class StateList:
    """Params of `state_list`: live keys starting with `prefix`, after `cursor`."""

    network: str
    prefix: str = ""
    limit: int = DEFAULT_PAGE
    cursor: str | None = None


async def _saved(done: Pending[dict[str, Any]]) -> dict[str, Any]:
    """The answer of a write once it is saved (`timeout` if that takes too long)."""
    with trio.move_on_after(WRITE_TIMEOUT):
        return await done.wait()
    raise OpError(ErrorCode.TIMEOUT, f"the write was not saved within {WRITE_TIMEOUT:g} s")


async def state_set(session: Session, params: StateSet) -> dict[str, Any]:
    """Set a key; every active peer gets the write, the others catch up later."""
    network = network_of(session, params.network)
    write = functools.partial(network.state.write, params.key, params.value, deleted=False)
    return await _saved(await network.ask("state set", write))


async def state_delete(session: Session, params: StateKey) -> dict[str, Any]:
    """Delete a key (a tombstone that replicates like a write)."""
    network = network_of(session, params.network)
    write = functools.partial(network.state.write, params.key, None, deleted=True)
    return await _saved(await network.ask("state delete", write))


def _key_of(params: StateSet | StateKey) -> Hashable:
    """The key a write changes: writes of it pipelined on one connection land in the order sent,
    so the last one sent is the value kept."""
    return ("state", params.network, params.key)


async def state_get(session: Session, params: StateKey) -> dict[str, Any]:
    """A key's value, version and author."""
    network = network_of(session, params.network)
    return await network.ask("state get", functools.partial(network.state.get, params.key))


async def state_list(session: Session, params: StateList) -> dict[str, Any]:
    """A page of live keys in key order."""
    network = network_of(session, params.network)
    page = functools.partial(network.state.list_live, params.prefix, params.limit, params.cursor)
    return await network.ask("state list", page)


OPS: list[Op[Any]] = [
    Op(
        "state_set",
        StateSet,
        state_set,
        "set a shared key {network, key, value}",
        command="state set",
        ordered_by=_key_of,
    ),
    Op(
        "state_delete",
        StateKey,
        state_delete,
        "delete a shared key {network, key}",
        command="state delete",
        ordered_by=_key_of,
    ),
    Op("state_get", StateKey, state_get, "read a shared key {network, key}", command="state get"),
    Op(
        "state_list",
        StateList,
        state_list,
        "list shared keys {network, prefix?, limit?, cursor?}",
        command="state list",
    ),
]
