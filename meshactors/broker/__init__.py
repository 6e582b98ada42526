"""The WebSocket relay that routes sealed frames between daemons of one network."""

from meshactors.broker.envelope import MalformedBatch, decode_batch, encode_batch
from meshactors.broker.hello import (
    BROKER_PATH,
    REJECT_CLOSE_CODES,
    HelloRejected,
    RejectReason,
    VerifiedHello,
    build_hello,
    verify_hello,
)
from meshactors.broker.limits import BrokerConfig
from meshactors.broker.server import SESSION_CLOSE_CODES, Broker, SessionEnd

__all__ = [
    "BROKER_PATH",
    "REJECT_CLOSE_CODES",
    "SESSION_CLOSE_CODES",
    "Broker",
    "BrokerConfig",
    "HelloRejected",
    "MalformedBatch",
    "RejectReason",
    "SessionEnd",
    "VerifiedHello",
    "build_hello",
    "decode_batch",
    "encode_batch",
    "verify_hello",
]
