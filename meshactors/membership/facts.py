"""The records of a closed network's membership log: the genesis, facts and invites, their
canonical encoding, hashes and Ed25519 signatures.

Canonical encoding of a record: a domain line (`meshactors-genesis-v1`, `meshactors-fact-v1`,
`meshactors-invite-v1`) and `\\n`, then the record's fields except `sig` as JSON with sorted
keys, no whitespace and ASCII only. A record's hash is the SHA-256 of that encoding (hex); its
`sig` is the author's detached Ed25519 signature of the same bytes (base64). A fact names the
genesis by its hash and the facts it follows (`parents`) by theirs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any, TypeVar

import attrs
import nacl.exceptions
import nacl.signing

from meshactors.identity import Identity
from meshactors.wire.broker import is_network_id
from meshactors.wire.device_id import is_device_id, public_key_from_device_id
from meshactors.wire.strict import describe_error, make_strict_converter

ROLES = ("owner", "admin", "member")  # strongest first
KINDS = ("grant", "revoke", "evict")
MAX_PARENTS = 16  # heads one fact may name
MAX_AT_MS = 2**53  # timestamps in milliseconds since the epoch, as JSON numbers stay exact
MAX_USES = 1000  # devices one invite may admit
MAX_BOOTSTRAP_CHARS = 2048  # a bootstrap string
MAX_TOKEN_CHARS = 8192  # an invite token (bootstrap, invite and broker URLs)
HASH_CHARS = 64
NONCE_BYTES = 16
SIG_CHARS = 88  # base64 of 64 bytes
BOOTSTRAP_PREFIX = "mshg1."
TOKEN_PREFIX = "mshi1."

R = TypeVar("R", "Genesis", "Fact", "Invite")
T = TypeVar("T")

converter = make_strict_converter()


class BadRecord(ValueError):
    """A genesis, fact or invite that is malformed or whose signature does not verify;
    `reason` is a stable counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _hex(chars: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if len(value) != chars or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"{attribute.name} must be {chars} lowercase hex digits")

    return check


def _device(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not is_device_id(value):
        raise ValueError(f"{attribute.name} is not a device id")


def _network(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not is_network_id(value):
        raise ValueError("network is not a network id")


def _at(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_AT_MS:
        raise ValueError(f"{attribute.name} must be between 0 and 2^53")


def _sig(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) != SIG_CHARS:
        raise ValueError(f"sig must be {SIG_CHARS} characters of base64")


def _role(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")


def _parents(_instance: object, _attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
    if not 1 <= len(value) <= MAX_PARENTS or value != sorted(set(value)):
        raise ValueError(f"parents must be 1-{MAX_PARENTS} distinct hashes in order")
    for parent in value:
        _hex(HASH_CHARS)(None, attrs.fields(Fact).parents, parent)


@attrs.frozen
class Genesis:
    """The first record of a closed network, signed by its owner (the creating device)."""

    network: str = attrs.field(validator=_network)
    owner: str = attrs.field(validator=_device)
    created_ms: int = attrs.field(validator=_at)
    nonce: str = attrs.field(validator=_hex(2 * NONCE_BYTES))
    sig: str = attrs.field(validator=_sig)

    @property
    def author(self) -> str:
        return self.owner


@attrs.frozen
class Invite:
    """A signed, expiring, use-limited promise of `role` by `issuer`; an admin or owner turns
    it into a grant for the device that presents it."""

    network: str = attrs.field(validator=_network)
    genesis: str = attrs.field(validator=_hex(HASH_CHARS))
    issuer: str = attrs.field(validator=_device)
    role: str = attrs.field(validator=_role)
    expires_ms: int = attrs.field(validator=_at)
    uses: int = attrs.field(
        validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(MAX_USES))
    )
    nonce: str = attrs.field(validator=_hex(2 * NONCE_BYTES))
    sig: str = attrs.field(validator=_sig)

    @property
    def author(self) -> str:
        return self.issuer


def _kind(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")


@attrs.frozen
class Fact:
    """One change of membership by `author`: grant or revoke `role` of `device`, or evict
    `device` (role ""), following the records named in `parents`."""

    network: str = attrs.field(validator=_network)
    genesis: str = attrs.field(validator=_hex(HASH_CHARS))
    author: str = attrs.field(validator=_device)
    kind: str = attrs.field(validator=_kind)
    device: str = attrs.field(validator=_device)
    role: str = attrs.field()
    at_ms: int = attrs.field(validator=_at)
    parents: list[str] = attrs.field(validator=_parents)
    invite: Invite | None
    sig: str = attrs.field(validator=_sig)

    @role.validator
    def _check_role(self, _attribute: attrs.Attribute[str], value: str) -> None:
        if self.kind == "evict" and value != "":
            raise ValueError("an evict names no role")
        if self.kind != "evict":
            _role(self, _attribute, value)
        if self.invite is not None and (self.kind != "grant" or self.invite.role != value):
            raise ValueError("only a grant of the invite's role carries an invite")


_DOMAINS: dict[type, bytes] = {
    Genesis: b"meshactors-genesis-v1\n",
    Fact: b"meshactors-fact-v1\n",
    Invite: b"meshactors-invite-v1\n",
}


def signed_bytes(record: Genesis | Fact | Invite) -> bytes:
    """The canonical encoding a record's hash and signature cover (see the module docstring)."""
    body = converter.unstructure(record)
    del body["sig"]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _DOMAINS[type(record)] + text.encode("ascii")


def record_hash(record: Genesis | Fact | Invite) -> str:
    """The record's hash: SHA-256 of its canonical encoding, in hex."""
    return hashlib.sha256(signed_bytes(record)).hexdigest()


def sign(identity: Identity, record: R) -> R:
    """`record` with its `sig` made by `identity` (which must be its author)."""
    signature = identity.sign(signed_bytes(record))
    return attrs.evolve(record, sig=base64.b64encode(signature).decode("ascii"))


def verify(record: Genesis | Fact | Invite) -> None:
    """Check the record's signature by its author; BadRecord `bad_signature` if it fails."""
    try:
        key = nacl.signing.VerifyKey(public_key_from_device_id(record.author))
        key.verify(signed_bytes(record), base64.b64decode(record.sig, validate=True))
    except (ValueError, binascii.Error, nacl.exceptions.BadSignatureError) as exc:
        raise BadRecord("bad_signature", f"{type(record).__name__.lower()}: {exc}") from None
    if isinstance(record, Fact) and record.invite is not None:
        verify(record.invite)


def nonce() -> str:
    """A fresh random nonce for a genesis or an invite."""
    return os.urandom(NONCE_BYTES).hex()


def structure(data: Any, cls: type[T]) -> T:
    """A record from untrusted JSON, strictly (BadRecord `malformed`); not yet verified."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        raise BadRecord("malformed", f"{cls.__name__.lower()}: {describe_error(exc)}") from None


def new_genesis(identity: Identity, network: str, now_ms: int) -> Genesis:
    """A signed genesis for a new closed network owned by `identity`."""
    unsigned = Genesis(network, identity.device_id, now_ms, nonce(), "A" * SIG_CHARS)
    return sign(identity, unsigned)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _unb64(text: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return json.loads(raw.decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRecord("malformed", f"not base64url JSON: {exc}") from None
    except RecursionError:  # deeper than the parser goes: no record nests like that
        raise BadRecord("malformed", "JSON nested too deeply") from None


def to_bootstrap(genesis: Genesis) -> str:
    """The genesis as one copy-pasteable string: `mshg1.` and base64url of its JSON."""
    return BOOTSTRAP_PREFIX + _b64(_compact(converter.unstructure(genesis)))


def from_bootstrap(text: str) -> Genesis:
    """The verified genesis a bootstrap string carries (BadRecord if it is not one)."""
    if len(text) > MAX_BOOTSTRAP_CHARS or not text.startswith(BOOTSTRAP_PREFIX):
        raise BadRecord(
            "malformed",
            f"a bootstrap starts with {BOOTSTRAP_PREFIX!r}, fits in "
            f"{MAX_BOOTSTRAP_CHARS} characters",
        )
    genesis = structure(_unb64(text[len(BOOTSTRAP_PREFIX) :]), Genesis)
    verify(genesis)
    return genesis


@attrs.frozen
class Token:
    """What an invite token carries: the genesis, the invite and the network's brokers."""

    genesis: Genesis
    invite: Invite
    brokers: list[str]


def to_token(token: Token) -> str:
    """An invite token: `mshi1.` and base64url of its JSON."""
    return TOKEN_PREFIX + _b64(_compact(converter.unstructure(token)))


def from_token(text: str) -> Token:
    """The token's contents, both signatures verified and the invite matching the genesis
    (BadRecord if not); expiry is the caller's to check against its clock."""
    if len(text) > MAX_TOKEN_CHARS or not text.startswith(TOKEN_PREFIX):
        raise BadRecord(
            "malformed",
            f"an invite token starts with {TOKEN_PREFIX!r}, fits in {MAX_TOKEN_CHARS} characters",
        )
    data = _unb64(text[len(TOKEN_PREFIX) :])
    token = structure(data, Token)
    verify(token.genesis)
    verify(token.invite)
    if token.invite.genesis != record_hash(token.genesis):
        raise BadRecord("wrong_network", "the invite is not for this genesis")
    return token
