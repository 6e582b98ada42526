"""Broker limits: defaults, the BrokerConfig the CLI exposes, and a token bucket for rates.

The message size, rate and burst defaults are the protocol's (a welcome that leaves them out
means them), so they live in meshactors/wire/broker.py."""

from collections.abc import Callable
from typing import Final

import attrs
from attrs import validators as v

from meshactors.broker.nonces import NONCE_CACHE_ENTRIES
from meshactors.wire.broker import MAX_BROKER_MESSAGE_BYTES, MESSAGE_BURST, MESSAGE_RATE_PER_S

MAX_PEERS_PER_NETWORK: Final = 256  # members of one network; one more is network_full
MAX_CONNECTIONS: Final = 4096  # open WebSockets per broker (incl. before hello); more get HTTP 503
FILES_PER_CONNECTION: Final = 1  # open files a connection holds: its socket
# connections from one address (an IPv4 address or an IPv6 /64) that have not yet been admitted
# by their hello; more get HTTP 503, without taking a place under max_connections, so one
# address cannot hold every place with silent connections. Behind a proxy every client has the
# proxy's address: raise it there
MAX_UNHELLOED_PER_ADDRESS: Final = 256
# seconds a 503 at the connection limit asks a client to wait (Retry-After); daemons back off
# on their own, this is for other clients and proxies
CONNECTION_LIMIT_RETRY_AFTER_S: Final = 5
# a `connection_refused` log line at most this often: a full broker refuses a fleet's retries
REFUSAL_LOG_INTERVAL_S: Final = 10.0
PING_INTERVAL_S: Final = 20.0  # idle time between keepalive pings
PONG_TIMEOUT_S: Final = 20.0  # a ping unanswered this long, with nothing else heard, drops it
# a ping unanswered this long drops the connection even while messages move: writes to a
# stopped member (SIGSTOP, a suspended laptop) land in its socket buffer for a long time. Three
# deadlines: the swarm's busy daemons answered some 20 s late, and a member 60 s behind on
# reading is what send_timeout gives up on too
PONG_CEILING_S: Final = 60.0
# one message to a member not taken in full this long ends it (slow_consumer), even while it
# is heard: a member that sends but never reads would otherwise hold its writer for ever
SEND_TIMEOUT_S: Final = 60.0
HANDSHAKE_TIMEOUT_S: Final = 10.0  # for the HTTP upgrade, and again for the hello
# Redis's answer to a hello's admission, before the hello goes on without it: well inside the
# 10 s a daemon waits for its welcome (WELCOME_TIMEOUT; `broker` refuses a flag as long), so the
# member is still connected when a late answer comes; also the longest that admission's leave
# (a member gone or refused) waits for room in the link's queue
ADMISSION_TIMEOUT_S: Final = 5.0
# read from a connection before its hello is admitted: the upgrade request (h11 takes up to
# 16 KiB) and the hello (1024 characters); then reading waits for the admission
PRE_ADMISSION_BYTES: Final = 32 * 1024
CLOSE_TIMEOUT_S: Final = 5.0  # for the WebSocket closing handshake
# connections past max_connections or max_unhelloed_per_address in their handshake at once (to
# be refused with the 503, or asking /health); more are closed at once unanswered, so a burst
# over the limits stays within the open files OPEN_FILES_RESERVE (128) keeps (as control's
# MAX_REFUSING does for its clients)
MAX_REFUSING: Final = 64
OUTBOUND_QUEUE_MESSAGES: Final = 4096  # queued messages to one receiver before slow_consumer
OUTBOUND_QUEUE_BYTES: Final = 8 << 20  # queued bytes to one receiver before slow_consumer
NOTICE_RATE_PER_S: Final = 10.0  # undeliverable notices per connection, sustained
NOTICE_BURST: Final = 20  # undeliverable notices per connection, burst
CLUSTER_HEARTBEAT_S: Final = 2.0  # a clustered broker renews its presence this often...
CLUSTER_TTL_S: Final = 8.0  # ...which lapses this long after its last beat (then reaped)
# the least --cluster-heartbeat: each beat is two Redis round trips; a few ms apart they load
# Redis and flap with any scheduling delay, and none of them is answered sooner for it
MIN_CLUSTER_HEARTBEAT_S: Final = 0.1
# the least --cluster-ttl: it is also how long the subscription may stay silent, and Redis
# takes the expiry in whole ms (under 1 ms: PX 0, refused, the link never connects)
MIN_CLUSTER_TTL_S: Final = 1.0
# the longest a broker's timeout or cluster period (--handshake-timeout, --admission-timeout,
# --cluster-heartbeat, --cluster-ttl) may be set to: a day
MAX_PERIOD_S: Final = 86_400.0
CLUSTER_FORWARD_QUEUE: Final = 8192  # envelopes for other brokers waiting; full: senders wait


def _fits_the_outbound_queue(
    instance: "BrokerConfig", attribute: "attrs.Attribute[int]", value: int
) -> None:
    """A message must fit a receiver's outbound queue; said of the message size, which
    `broker --max-message-bytes` sets (the queue has no flag)."""
    queue = instance.outbound_queue_bytes
    if value > queue:
        raise ValueError(
            f"{attribute.name} must be at most {queue} (the outbound queue holds one message),"
            f" not {value}"
        )


def _at_least_pong_timeout(
    instance: "BrokerConfig", attribute: "attrs.Attribute[float]", value: float
) -> None:
    if value < instance.pong_timeout:
        raise ValueError(f"{attribute.name} ({value}) must be at least pong_timeout")


Validator = Callable[["BrokerConfig", "attrs.Attribute[float]", float], None]


def _at_least(least: float, name: str) -> Validator:
    """A validator refusing a period under `least` seconds (the constant `name`), which can
    never work."""

    def check(instance: "BrokerConfig", attribute: "attrs.Attribute[float]", value: float) -> None:
        if not value >= least:
            raise ValueError(f"{attribute.name} ({value}) must be at least {least} s ({name})")

    return check


def _two_heartbeats(
    instance: "BrokerConfig", attribute: "attrs.Attribute[float]", value: float
) -> None:
    if value < 2 * instance.cluster_heartbeat:
        each = instance.cluster_heartbeat
        raise ValueError(
            f"{attribute.name} ({value}) must cover two cluster_heartbeat periods ({each} each)"
        )


@attrs.frozen
class BrokerConfig:
    """Every tunable limit of one broker; defaults are the module constants."""

    max_message_bytes: int = attrs.field(
        default=MAX_BROKER_MESSAGE_BYTES, validator=[v.gt(0), _fits_the_outbound_queue]
    )
    message_rate: float = attrs.field(default=MESSAGE_RATE_PER_S, validator=v.gt(0))
    message_burst: int = attrs.field(default=MESSAGE_BURST, validator=v.ge(1))
    max_peers: int = attrs.field(default=MAX_PEERS_PER_NETWORK, validator=v.ge(1))
    max_connections: int = attrs.field(default=MAX_CONNECTIONS, validator=v.ge(1))
    max_unhelloed_per_address: int = attrs.field(
        default=MAX_UNHELLOED_PER_ADDRESS, validator=v.ge(1)
    )
    ping_interval: float = attrs.field(default=PING_INTERVAL_S, validator=v.gt(0))
    pong_timeout: float = attrs.field(default=PONG_TIMEOUT_S, validator=v.gt(0))
    pong_ceiling: float = attrs.field(default=PONG_CEILING_S, validator=_at_least_pong_timeout)
    send_timeout: float = attrs.field(default=SEND_TIMEOUT_S, validator=v.gt(0))
    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT_S, validator=v.gt(0))
    admission_timeout: float = attrs.field(default=ADMISSION_TIMEOUT_S, validator=v.gt(0))
    close_timeout: float = attrs.field(default=CLOSE_TIMEOUT_S, validator=v.gt(0))
    outbound_queue_messages: int = attrs.field(default=OUTBOUND_QUEUE_MESSAGES, validator=v.ge(1))
    outbound_queue_bytes: int = OUTBOUND_QUEUE_BYTES  # at least max_message_bytes (checked there)
    cluster_heartbeat: float = attrs.field(
        default=CLUSTER_HEARTBEAT_S,
        validator=_at_least(MIN_CLUSTER_HEARTBEAT_S, "MIN_CLUSTER_HEARTBEAT_S"),
    )
    cluster_ttl: float = attrs.field(
        default=CLUSTER_TTL_S,
        validator=[_at_least(MIN_CLUSTER_TTL_S, "MIN_CLUSTER_TTL_S"), _two_heartbeats],
    )
    cluster_forward_queue: int = attrs.field(default=CLUSTER_FORWARD_QUEUE, validator=v.ge(1))
    nonce_entries: int = attrs.field(default=NONCE_CACHE_ENTRIES, validator=v.ge(1))


@attrs.define
class TokenBucket:
    """Allows `rate` events per second on average and `burst` at once; time is passed in."""

    rate: float
    burst: float
    _tokens: float = attrs.field(init=False)
    _stamp: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._tokens = self.burst

    def take(self, now: float) -> bool:
        """Spend one token at time `now` (seconds); False when the bucket is empty."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def delay(self, now: float) -> float:
        """Seconds from `now` until a token can be taken (0: one can be now)."""
        self._refill(now)
        return max(0.0, (1 - self._tokens) / self.rate)

    def spend(self, now: float, tokens: float = 1) -> None:
        """Spend `tokens` even if the bucket holds less (after waiting `delay`, rounding may
        leave a hair under one; a cost known only once paid may exceed it); the debt delays
        the next token."""
        self._refill(now)
        self._tokens -= tokens

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
