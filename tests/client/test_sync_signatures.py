"""The blocking facade takes exactly the arguments of the async client it wraps, so code moves
between the two without surprises (e.g. `ensure_networks(..., purge_removed=True)`)."""

from __future__ import annotations

import inspect

from meshactors.client import MeshClient, SyncMeshClient


def shape(function: object) -> list[tuple[str, inspect._ParameterKind, object]]:
    """A signature without its annotations: names, kinds and defaults."""
    signature = inspect.signature(function)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def shared_methods() -> list[str]:
    """Every public method (and the constructor) the facade has in common with MeshClient."""
    names = [n for n in vars(SyncMeshClient) if not n.startswith("_") or n == "__init__"]
    return [n for n in names if callable(getattr(MeshClient, n, None))]


def test_the_facade_mirrors_the_async_clients_methods() -> None:
    shared = shared_methods()
    assert {"__init__", "start", "call", "ensure_networks", "events"} <= set(shared)
    mismatched = {
        name: (shape(getattr(SyncMeshClient, name)), shape(getattr(MeshClient, name)))
        for name in shared
        if shape(getattr(SyncMeshClient, name)) != shape(getattr(MeshClient, name))
    }
    assert mismatched == {}
