"""The messages between a clustered broker and its Redis link (meshactors/broker/cluster.py),
apart from the link so that a broker without a cluster never imports the Redis client."""

from typing import Final

import attrs
import trio

from meshactors.broker.cluster_wire import Envelope, PresenceEntry, PresenceEvent
from meshactors.wire.broker import VerifiedHello

EVENT_QUEUE: Final = 1024  # events waiting for the broker (the subscriber waits when full)

Roster = dict[str, PresenceEntry]  # device id -> where it is connected


@attrs.frozen
class AdmitResult:
    """`ok` (with the network's live roster), `replayed`, `full`, `older` (a newer connection
    of the device is on another broker) or `unavailable` (Redis is not reachable)."""

    status: str
    roster: Roster = attrs.field(factory=dict)


@attrs.frozen
class Admit:
    """Record a hello's nonce and member on Redis; the answer comes on `reply`."""

    hello: VerifiedHello
    entry: PresenceEntry
    max_peers: int
    reply: trio.MemorySendChannel[AdmitResult]


@attrs.frozen
class Depart:
    """Remove a member's entry from Redis if it is still this one."""

    network: str
    device_id: str
    entry: PresenceEntry


@attrs.frozen
class Register:
    """Record a member admitted here that Redis did not record (its admission was answered
    after the hello went on without it); answer with the network's live roster (None: Redis
    went away meanwhile)."""

    network: str
    device_id: str
    entry: PresenceEntry
    reply: trio.MemorySendChannel[Roster | None]


@attrs.frozen
class Resync:
    """Register every local member again, drop our entries for members gone, and answer with
    the live roster of each network (None: Redis went away meanwhile)."""

    members: list[tuple[str, str, PresenceEntry]]  # network, device id, entry
    reply: trio.MemorySendChannel[dict[str, Roster] | None]


Control = Admit | Depart | Register | Resync


@attrs.frozen
class Forward:
    """An envelope for a member of another broker, to publish; `sender` (the public key of
    the member it came from, in the envelope's network) is told when nobody received it."""

    broker: str
    envelope: Envelope
    sender: bytes


@attrs.frozen
class StateChanged:
    """The link reached Redis (`connected`), lost it (`degraded`), or failed to reach it
    before it ever did (`starting`)."""

    state: str  # starting (Redis not reached yet) | connected | degraded (Redis lost)


@attrs.frozen
class Delivered:
    """Envelopes another broker published for our members."""

    envelopes: list[Envelope]


@attrs.frozen
class Unreceived:
    """Forwards published to an inbox that no broker read (its broker is gone)."""

    forwards: list[Forward]


@attrs.frozen
class Dropped:
    """Something the link dropped, named by the broker figure it counts in."""

    what: str  # cluster_bad_messages | cluster_forwards_lost


ClusterEvent = StateChanged | PresenceEvent | Delivered | Unreceived | Dropped
