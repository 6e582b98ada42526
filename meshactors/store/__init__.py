"""The SQLite state database and the repository functions that run against it.

All functions are synchronous, take the connection from `open_database` first and the
time as `now_ms`; the store actor runs them one at a time in a worker thread. The
repository modules are re-exported whole (`store.outbox.accept`, `store.events.since`,
`store.inbox.page`, ...) because their function names only make sense with the module's.
"""

from meshactors.store import events, inbox, networks, outbox
from meshactors.store.db import StoreError, immediate, open_database
from meshactors.store.events import Event, SinceResult
from meshactors.store.fingerprint import (
    ENVELOPE_VERSION,
    fingerprint_prefix,
    mint_client_message_id,
    request_fingerprint,
)
from meshactors.store.inbox import InboxMessage
from meshactors.store.networks import RosterEntry, UnknownNetwork
from meshactors.store.outbox import (
    AcceptOutcome,
    Delivery,
    DeliveryKey,
    OutboxRow,
    RecipientState,
    SendError,
)

__all__ = [
    "ENVELOPE_VERSION",
    "AcceptOutcome",
    "Delivery",
    "DeliveryKey",
    "Event",
    "InboxMessage",
    "OutboxRow",
    "RecipientState",
    "RosterEntry",
    "SendError",
    "SinceResult",
    "StoreError",
    "UnknownNetwork",
    "events",
    "fingerprint_prefix",
    "immediate",
    "inbox",
    "mint_client_message_id",
    "networks",
    "open_database",
    "outbox",
    "request_fingerprint",
]
