"""The signed broker hello: a daemon proves it holds its device key before joining a network.

The hello is the first (TEXT, JSON) message on a broker connection. Its Ed25519 signature
covers the network, device id, timestamp and nonce under a domain-separation prefix, so
a hello cannot be replayed into another network, nor later, nor twice (see NonceCache).
"""

import base64
import binascii
import enum
import heapq
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any, Final

import attrs
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from meshactors.wire.device_id import device_id_from_public_key, public_key_from_device_id

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
NONCE_CACHE_ENTRIES: Final = 100_000  # replay memory bound (~60 s of hellos at ~800/s)

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
    fields = _parse(text)
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


@attrs.define
class NonceCache:
    """Remembers each (device, nonce) for as long as its hello could still pass the clock check.

    Bounded: when full of live entries it refuses new hellos (broker_busy) rather than forget
    a nonce early, which would reopen the replay window.
    """

    capacity: int = NONCE_CACHE_ENTRIES
    _expiry: dict[tuple[str, str], int] = attrs.field(init=False, factory=dict)
    _heap: list[tuple[int, tuple[str, str]]] = attrs.field(init=False, factory=list)

    def admit(self, hello: VerifiedHello, *, now_ms: int) -> None:
        """Record the hello's nonce; raise HelloRejected if seen before or if memory is full."""
        while self._heap and self._heap[0][0] < now_ms:
            _, expired = heapq.heappop(self._heap)
            del self._expiry[expired]
        key = (hello.device_id, hello.nonce)
        if key in self._expiry:
            raise HelloRejected(RejectReason.REPLAYED_NONCE)
        if len(self._expiry) >= self.capacity:
            raise HelloRejected(RejectReason.BROKER_BUSY, "nonce cache full")
        expiry = hello.ts_ms + MAX_CLOCK_SKEW_MS
        self._expiry[key] = expiry
        heapq.heappush(self._heap, (expiry, key))

    def __len__(self) -> int:
        return len(self._expiry)


def _parse(text: str) -> dict[str, Any]:
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
