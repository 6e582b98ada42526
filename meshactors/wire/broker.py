"""The broker protocol (daemon <-> broker): every message both ways and the close codes.

docs/protocol.md, "Broker", describes it. The broker and the link both import this module, so
the two sides cannot drift: the daemon's signed hello (TEXT), the broker's notices (TEXT JSON:
welcome, presence, undeliverable), batches of sealed-frame records (BINARY), and the close
codes and reasons the broker ends a connection with. Decoding is strict and total: bad input
raises this module's errors (HelloRejected, BrokerProtocolError, MalformedBatch), nothing else.

The hello's Ed25519 signature covers the network, device id, timestamp, nonce and role under a
domain-separation prefix, so a hello cannot be replayed into another network, nor later; the
broker's nonce memory (meshactors/broker/nonces.py) refuses it twice.
"""

import base64
import binascii
import enum
import json
import re
import secrets
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from meshactors.wire.device_id import (
    PUBLIC_KEY_BYTES,
    device_id_from_public_key,
    is_device_id,
    public_key_from_device_id,
)
from meshactors.wire.jsonlimits import BadJson, check_json

BROKER_PATH: Final = (
    "/v1"  # the only WebSocket resource a broker serves (URLs without a path get it)
)
HELLO_DOMAIN: Final = b"meshactors/broker-hello/v1\n"  # signature domain separation
HELLO_VERSION: Final = 1
MAX_CLOCK_SKEW_MS: Final = 60_000  # |now - ts| beyond this is stale_timestamp
NONCE_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64
MAX_HELLO_CHARS: Final = 1024  # a valid hello is ~330 chars; cap before JSON parsing
MAX_ROLE_CHARS: Final = 32
MAX_NOTICE_CHARS: Final = 64 * 1024  # a TEXT notice (welcome with 256 peers is ~20 KB)
MAX_BROKER_MESSAGE_BYTES: Final = 1 << 20  # a broker's default message size; a welcome without it
MESSAGE_RATE_PER_S: Final = 2000.0  # a broker's default inbound messages/s per connection
MESSAGE_BURST: Final = 4000  # a broker's default burst of inbound messages per connection
MESSAGE_TOO_BIG: Final = 1009  # the close code trio-websocket sends for an oversize message
_LENGTH: Final = struct.Struct(">I")
RECORD_HEADER_BYTES: Final = PUBLIC_KEY_BYTES + _LENGTH.size  # 36: address + u32 length
MAX_RECORD_BYTES: Final = 2**32 - 1  # what a u32 length can declare

_NETWORK_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HELLO_KEYS: Final = frozenset({"type", "v", "network", "device_id", "ts", "nonce", "role", "sig"})


class RejectReason(enum.StrEnum):
    """Why a hello was refused; the value is the stable WebSocket close reason."""

    MALFORMED_HELLO = "malformed_hello"
    BAD_SIGNATURE = "bad_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAYED_NONCE = "replayed_nonce"
    NETWORK_FULL = "network_full"
    HELLO_TIMEOUT = "hello_timeout"
    BROKER_BUSY = "broker_busy"


REJECT_CLOSE_CODES: Final[Mapping[RejectReason, int]] = {
    RejectReason.MALFORMED_HELLO: 4400,
    RejectReason.BAD_SIGNATURE: 4401,
    RejectReason.STALE_TIMESTAMP: 4401,
    RejectReason.REPLAYED_NONCE: 4401,
    RejectReason.NETWORK_FULL: 4409,
    RejectReason.HELLO_TIMEOUT: 4408,
    RejectReason.BROKER_BUSY: 1013,  # RFC 6455 "try again later": replay memory is full
}


class SessionEnd(enum.StrEnum):
    """Why an admitted connection ended; the value is the WebSocket close reason sent."""

    CLIENT_CLOSED = "client_closed"
    REPLACED = "replaced"
    RATE_LIMITED = "rate_limited"
    SLOW_CONSUMER = "slow_consumer"
    PONG_TIMEOUT = "pong_timeout"
    MALFORMED_BATCH = "malformed_batch"
    UNEXPECTED_TEXT = "unexpected_text"
    MESSAGE_TOO_BIG = "message_too_big"
    GOING_AWAY = "going_away"


SESSION_CLOSE_CODES: Final[Mapping[SessionEnd, int]] = {
    SessionEnd.CLIENT_CLOSED: 1000,  # never sent: the client closed first
    SessionEnd.REPLACED: 4409,  # the same device connected again to the same network
    SessionEnd.RATE_LIMITED: 4429,
    SessionEnd.SLOW_CONSUMER: 4408,
    SessionEnd.PONG_TIMEOUT: 4408,
    SessionEnd.MALFORMED_BATCH: 4400,
    SessionEnd.UNEXPECTED_TEXT: 4400,  # only the hello is TEXT from a daemon
    SessionEnd.MESSAGE_TOO_BIG: MESSAGE_TOO_BIG,  # sent by trio-websocket itself
    SessionEnd.GOING_AWAY: 1001,  # the broker is shutting down
}


class HelloRejected(Exception):
    """A hello was refused; `reason` is the stable close reason, `detail` is for logs only."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail

    @property
    def close_code(self) -> int:
        """The WebSocket close code the broker sends for this rejection."""
        return REJECT_CLOSE_CODES[self.reason]


@attrs.frozen
class VerifiedHello:
    """A hello whose shape, signature and timestamp checked out (replay is checked separately)."""

    network: str
    device_id: str
    public_key: bytes
    role: str
    ts_ms: int
    nonce: str


def build_hello(
    signing_key: SigningKey,
    network: str,
    role: str,
    *,
    now_ms: int,
    nonce: bytes | None = None,
) -> str:
    """Return the hello text a daemon sends first, signed with its device key."""
    if not is_network_id(network):
        raise ValueError(f"network must be 1-64 chars of [A-Za-z0-9._-], got {network!r}")
    if not is_role(role):
        raise ValueError(f"role must be 1-{MAX_ROLE_CHARS} printable chars, got {role!r}")
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    device_id = device_id_from_public_key(signing_key.verify_key.encode())
    nonce_b64 = base64.b64encode(nonce).decode("ascii")
    signed = _signed_bytes(network, device_id, now_ms, nonce_b64, role)
    signature = signing_key.sign(signed).signature
    hello = {
        "type": "hello",
        "v": HELLO_VERSION,
        "network": network,
        "device_id": device_id,
        "ts": now_ms,
        "nonce": nonce_b64,
        "role": role,
        "sig": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(hello, separators=(",", ":"))


def verify_hello(text: str, *, now_ms: int) -> VerifiedHello:
    """Parse and authenticate a hello; raise HelloRejected naming the first problem found."""
    fields = _parse_hello(text)
    network, device_id, ts, nonce_b64, role, sig_b64 = (
        fields["network"],
        fields["device_id"],
        fields["ts"],
        fields["nonce"],
        fields["role"],
        fields["sig"],
    )
    if fields["type"] != "hello" or fields["v"] != HELLO_VERSION or type(fields["v"]) is not int:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "not a v1 hello")
    if not (isinstance(network, str) and is_network_id(network)):
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "bad network")
    if not (isinstance(role, str) and is_role(role)):
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "bad role")
    if type(ts) is not int:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "ts must be an integer")
    public_key = _device_key(device_id)
    _strict_b64(nonce_b64, NONCE_BYTES, "nonce")
    signature = _strict_b64(sig_b64, SIGNATURE_BYTES, "sig")
    try:
        VerifyKey(public_key).verify(
            _signed_bytes(network, device_id, ts, nonce_b64, role), signature
        )
    except CryptoError as exc:
        raise HelloRejected(RejectReason.BAD_SIGNATURE) from exc
    if abs(now_ms - ts) > MAX_CLOCK_SKEW_MS:
        raise HelloRejected(RejectReason.STALE_TIMESTAMP, f"ts is {now_ms - ts} ms off")
    return VerifiedHello(network, device_id, public_key, role, ts, nonce_b64)


def is_network_id(value: str) -> bool:
    """True when `value` is a valid network id: 1-64 chars of [A-Za-z0-9._-]."""
    return _NETWORK_RE.fullmatch(value) is not None


def _parse_hello(text: str) -> dict[str, Any]:
    if len(text) > MAX_HELLO_CHARS:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, f"hello longer than {MAX_HELLO_CHARS}")
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "not JSON") from exc
    if not isinstance(fields, dict):
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "not a JSON object")
    if fields.keys() != _HELLO_KEYS:
        missing, extra = _HELLO_KEYS - fields.keys(), fields.keys() - _HELLO_KEYS
        detail = f"missing {sorted(missing)}, unexpected {sorted(extra)[:8]}"
        raise HelloRejected(RejectReason.MALFORMED_HELLO, detail)
    return fields


def _device_key(device_id: object) -> bytes:
    if not isinstance(device_id, str):
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "device_id must be a string")
    try:
        return public_key_from_device_id(device_id)
    except ValueError as exc:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, "bad device_id") from exc


def _strict_b64(value: object, size: int, name: str) -> bytes:
    """Decode canonical padded base64 of exactly `size` bytes."""
    if not isinstance(value, str) or not value.isascii():
        raise HelloRejected(RejectReason.MALFORMED_HELLO, f"{name} must be base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, f"{name} is not base64") from exc
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != value:
        raise HelloRejected(RejectReason.MALFORMED_HELLO, f"{name} must be {size} bytes")
    return raw


def is_role(value: str) -> bool:
    """Whether `value` is a role a hello may carry: 1-MAX_ROLE_CHARS printable characters."""
    return 0 < len(value) <= MAX_ROLE_CHARS and value.isprintable()


def _signed_bytes(network: str, device_id: str, ts: int, nonce_b64: str, role: str) -> bytes:
    """What the hello's signature covers: the role too, so a relay cannot rewrite it."""
    return HELLO_DOMAIN + "\n".join([network, device_id, str(ts), nonce_b64, role]).encode()


class BrokerProtocolError(Exception):
    """The broker said something we cannot read where a welcome or notice was due."""


@attrs.frozen
class Welcome:
    """The broker's first notice: who is present, and the limits our messages must keep."""

    peers: list[tuple[str, str]]  # (device_id, role)
    max_message_bytes: int = MAX_BROKER_MESSAGE_BYTES  # one message
    message_rate: float = MESSAGE_RATE_PER_S  # messages per second, sustained
    message_burst: int = MESSAGE_BURST  # messages at once


@attrs.frozen
class PresenceJoin:
    """A device joined the network at the broker."""

    device_id: str
    role: str


@attrs.frozen
class PresenceLeave:
    """A device left the network at the broker."""

    device_id: str


@attrs.frozen
class Undeliverable:
    """The broker could not deliver to this device (not in the network)."""

    device_id: str


Notice = PresenceJoin | PresenceLeave | Undeliverable


def encode_notice(notice: Welcome | Notice) -> str:
    """The TEXT message the broker sends for `notice` (compact JSON, keys in documented order)."""
    match notice:
        case Welcome():
            peers = [{"device_id": device_id, "role": role} for device_id, role in notice.peers]
            fields: dict[str, object] = {
                "type": "welcome",
                "v": HELLO_VERSION,
                "peers": peers,
                "max_message_bytes": notice.max_message_bytes,
                "message_rate": notice.message_rate,
                "message_burst": notice.message_burst,
            }
        case PresenceJoin():
            fields = {
                "type": "presence",
                "event": "join",
                "device_id": notice.device_id,
                "role": notice.role,
            }
        case PresenceLeave():
            fields = {"type": "presence", "event": "leave", "device_id": notice.device_id}
        case Undeliverable():
            fields = {"type": "undeliverable", "device_id": notice.device_id}
    return json.dumps(fields, separators=(",", ":"))


def decode_welcome(text: object) -> Welcome:
    """The peers present and the broker's limits, from a welcome (a limit it leaves out is
    the documented default); BrokerProtocolError for anything else."""
    data = _load_notice(text)
    peers = data.get("peers")
    if data.get("type") != "welcome" or not isinstance(peers, list):
        raise BrokerProtocolError(f"expected a welcome, got {str(data.get('type'))[:40]!r}")
    limit = data.get("max_message_bytes", MAX_BROKER_MESSAGE_BYTES)
    if type(limit) is not int or limit <= RECORD_HEADER_BYTES:
        raise BrokerProtocolError("welcome has a bad max_message_bytes")
    rate = data.get("message_rate", MESSAGE_RATE_PER_S)
    if type(rate) not in (int, float) or not 0 < rate < float("inf"):
        raise BrokerProtocolError("welcome has a bad message_rate")
    burst = data.get("message_burst", MESSAGE_BURST)
    if type(burst) is not int or burst < 1:
        raise BrokerProtocolError("welcome has a bad message_burst")
    members = [_member(entry) for entry in peers]
    return Welcome(members, limit, float(rate), burst)


def decode_notice(text: object) -> Notice | None:
    """A presence or undeliverable notice; None for a notice type we do not know;
    BrokerProtocolError for a malformed one."""
    data = _load_notice(text)
    match data.get("type"), data.get("event"):
        case "presence", "join":
            return PresenceJoin(*_member(data))
        case "presence", "leave":
            device_id = data.get("device_id")
            if isinstance(device_id, str) and is_device_id(device_id):
                return PresenceLeave(device_id)
        case "undeliverable", _:
            device_id = data.get("device_id")
            if isinstance(device_id, str) and is_device_id(device_id):
                return Undeliverable(device_id)
        case _:
            return None
    raise BrokerProtocolError("malformed notice")


def _load_notice(text: object) -> dict[str, Any]:
    if not isinstance(text, str) or len(text) > MAX_NOTICE_CHARS:
        raise BrokerProtocolError("expected a TEXT notice")
    try:
        data = json.loads(text)
        check_json(data)  # what we read from it may reach events, the roster and clients
    except BadJson as bad:
        raise BrokerProtocolError(f"notice holds a value we cannot pass on: {bad}") from None
    except (ValueError, RecursionError):
        raise BrokerProtocolError("notice is not JSON") from None
    if not isinstance(data, dict):
        raise BrokerProtocolError("notice is not a JSON object")
    return data


def _member(entry: object) -> tuple[str, str]:
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("device_id"), str)
        and is_device_id(entry["device_id"])
        and isinstance(entry.get("role"), str)
        and is_role(entry["role"])
    ):
        return entry["device_id"], entry["role"]
    raise BrokerProtocolError("welcome lists a malformed peer")


class MalformedBatch(ValueError):
    """A batch (or records to encode) that does not follow the record layout."""

    code: Final = "malformed_batch"


def encode_batch(records: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Concatenate (address, payload) records into one BINARY batch message.

    A record is `address (32 raw public-key bytes) + u32 big-endian length + bytes`: daemon to
    broker the address is the destination (`to`), broker to daemon the sender (`from`).
    """
    if not records:
        raise MalformedBatch("a batch holds at least one record")
    parts: list[bytes] = []
    for address, payload in records:
        if len(address) != PUBLIC_KEY_BYTES:
            raise MalformedBatch(f"address must be {PUBLIC_KEY_BYTES} bytes, got {len(address)}")
        if len(payload) > MAX_RECORD_BYTES:
            raise MalformedBatch(f"record of {len(payload)} bytes exceeds the u32 length")
        parts += (address, _LENGTH.pack(len(payload)), payload)
    return b"".join(parts)


def decode_batch(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a batch message into (address, payload) records; strict about every byte."""
    if not data:
        raise MalformedBatch("empty batch")
    view = memoryview(data)
    records: list[tuple[bytes, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < RECORD_HEADER_BYTES:
            raise MalformedBatch(f"truncated record header at byte {offset}")
        (length,) = _LENGTH.unpack_from(data, offset + PUBLIC_KEY_BYTES)
        start = offset + RECORD_HEADER_BYTES
        if length > len(data) - start:
            raise MalformedBatch(
                f"record at byte {offset} declares {length} bytes, {len(data) - start} remain"
            )
        records.append(
            (bytes(view[offset : offset + PUBLIC_KEY_BYTES]), bytes(view[start : start + length]))
        )
        offset = start + length
    return records
