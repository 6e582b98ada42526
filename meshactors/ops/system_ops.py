"""Ops about the daemon itself: status, version, inspect, shutdown and the event stream."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import attrs

from meshactors.control.event_stream import (
    EVENT_CAPACITY,
    LAG_DISCONNECT_LIMIT,
    HubSubscription,
    check_since,
    cut_off_when_overflowed,
    replay_then_follow,
)
from meshactors.control.session import Session
from meshactors.ops.optable import NoParams, Op
from meshactors.wire.ipc import IPC_API_VERSION, ErrorCode, OpError

FEATURES = ("json-lines", "events", "inspect", "http", "sse")  # grows as capabilities land


async def status(session: Session, _: NoParams) -> dict[str, Any]:
    """Who this daemon is and what it is doing."""
    services = session.services
    return {
        "version": services.version,
        "device_id": services.identity.device_id,
        "label": services.identity.label,
        "role": services.networks.role,
        "uptime_s": round(services.uptime(), 3),
        "socket": str(services.paths.socket),
        "networks": await services.networks.summaries(),
        "clients": len(services.client_nodes()),
        "client_id": session.client_id,
    }


async def version(session: Session, _: NoParams) -> dict[str, Any]:
    """Daemon and API versions, and every op this daemon answers."""
    return {
        "version": session.services.version,
        "ipc_api": IPC_API_VERSION,
        "ops": session.services.ops.names(),
        "features": list(FEATURES),
    }


async def inspect(session: Session, _: NoParams) -> dict[str, Any]:
    """The live actor tree."""
    return session.services.tree.snapshot()


async def shutdown(session: Session, _: NoParams) -> dict[str, Any]:
    """Ask the daemon to stop; it answers first, then stops in reverse start order."""
    session.services.shutdown.ring()
    return {"stopping": True}


@attrs.frozen
class EventsSubscribe:
    """Params of `events_subscribe`: replay logged events after `since` before live ones."""

    since: int | None = None


def events_subscribe(session: Session, params: EventsSubscribe) -> Awaitable[dict[str, Any]]:
    """Turn this connection into an event stream too (requests keep working on it). Checked
    and claimed when the request is begun, in the order requests arrive (OpTable.begin), so
    of two subscribes sent together the first wins and the second gets `conflict`."""
    if session.events_subscribed:
        raise OpError(ErrorCode.CONFLICT, "this connection already receives events")
    check_since(params.since)
    session.events_subscribed = True
    return _subscribe(session, params.since)


async def _subscribe(session: Session, since: int | None) -> dict[str, Any]:
    """Subscribe the claiming connection to the hub and start its stream; a subscribe that
    fails gives the claim back."""
    hub = session.services.events
    try:
        live, last_event_id = await hub.subscribe(EVENT_CAPACITY, LAG_DISCONNECT_LIMIT)
    except BaseException:
        session.events_subscribed = False
        raise
    session.nursery.start_soon(cut_off_when_overflowed, live)

    async def unsubscribe() -> None:
        live.close()

    session.on_close(unsubscribe)
    stream = session.event_stream = HubSubscription(live, last_event_id)
    session.nursery.start_soon(replay_then_follow, hub, session.sink, stream, since)
    return {"client_id": session.client_id, "last_event_id": last_event_id}


OPS: list[Op[Any]] = [
    Op(
        "status",
        NoParams,
        status,
        "daemon version, device id, uptime, networks, clients",
        command="daemon status",
        http_get="/v1/status",
    ),
    Op(
        "version",
        NoParams,
        version,
        "daemon version, IPC API version, ops and features",
        command="daemon version",
        http_get="/v1/version",
    ),
    Op("inspect", NoParams, inspect, "the live actor tree", command="inspect"),
    Op("shutdown", NoParams, shutdown, "stop the daemon cleanly", command="daemon down"),
    Op(
        "events_subscribe",
        EventsSubscribe,
        events_subscribe,
        "stream events on this connection",
        command="events",
        client="events",
        pushes=True,
        http_get="/v1/events",
    ),
]
