"""The SQLite state database and the repository functions that run against it.

All functions are synchronous, take the connection from `db.open_database` first and the
time as `now_ms`; the store actor runs them one at a time in a worker thread. The
repository modules are re-exported whole (`store.outbox.accept`, `store.events.since`,
`store.inbox.page`, ...) because their function names only make sense with the module's.
"""

from meshactors.store import events, inbox, networks, outbox
from meshactors.store.db import StoreError, immediate
from meshactors.store.events import Event, SinceResult
from meshactors.store.fingerprint import (
    fingerprint_prefix,
    request_fingerprint,
)
from meshactors.store.inbox import InboxMessage
from meshactors.store.networks import RosterEntry, UnknownNetwork
from meshactors.store.outbox import (
    AcceptOutcome,
    Delivery,
    DeliveryKey,
    OutboxRow,
    SendError,
)

__all__ = [
    "AcceptOutcome",
    "Delivery",
    "DeliveryKey",
    "Event",
    "InboxMessage",
    "OutboxRow",
    "RosterEntry",
    "SendError",
    "SinceResult",
    "StoreError",
    "UnknownNetwork",
    "events",
    "fingerprint_prefix",
    "immediate",
    "inbox",
    "networks",
    "outbox",
    "request_fingerprint",
]
