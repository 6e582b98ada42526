"""Request fingerprints that make sends idempotent, and the time-ordered ids (ULIDs) we mint."""

import hashlib
import json
import secrets
import threading
from typing import Any

import attrs

ENVELOPE_VERSION = 1  # the "v" of the canonical form; bump it when the form changes
FINGERPRINT_PREFIX_CHARS = 16  # hex chars of a fingerprint shown to clients (64 bits)
_ULID_TIME_BITS = 48  # milliseconds since the epoch, good until the year 10889
_ULID_RANDOM_BITS = 80
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two Crockford characters: a ULID's 130 bits (the top two zero)
# are 13 lookups, half the time of base64.b32encode, which is Python code in 3.11
_PAIRS = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_PAIR_SHIFTS = range(120, -1, -10)


def request_fingerprint(
    *,
    destination_kind: str,
    destination_ref: str,
    reply_to_id: str | None,
    priority: str,
    meta: dict[str, Any] | None,
    body: bytes,
) -> bytes:
    """SHA-256 of a send request's canonical form; equal requests have equal fingerprints.

    The canonical form is the UTF-8 encoding of

        json.dumps({"v": ENVELOPE_VERSION, "dest_kind": destination_kind,
                    "dest_ref": destination_ref, "reply_to_id": reply_to_id,
                    "priority": priority, "meta": meta,
                    "body_sha256": hashlib.sha256(body).hexdigest()},
                   sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    so key order inside `meta` (at any depth) does not matter, while any change of
    destination, reply, priority, meta value or body does.
    """
    canonical = json.dumps(
        {
            "v": ENVELOPE_VERSION,
            "dest_kind": destination_kind,
            "dest_ref": destination_ref,
            "reply_to_id": reply_to_id,
            "priority": priority,
            "meta": meta,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def fingerprint_prefix(fp: bytes) -> str:
    """The first hex characters of a fingerprint, enough for a person to compare two."""
    return fp.hex()[:FINGERPRINT_PREFIX_CHARS]


@attrs.define
class UlidMinter:
    """Mints ULIDs that strictly increase, within one millisecond or across a clock step back."""

    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _last: int = 0

    def mint(self, now_ms: int) -> str:
        """A 26-char Crockford base32 ULID for `now_ms`, greater than every earlier one."""
        if not 0 <= now_ms < 1 << _ULID_TIME_BITS:
            raise ValueError(f"now_ms out of ULID range: {now_ms}")
        with self._lock:
            if now_ms > self._last >> _ULID_RANDOM_BITS:
                self._last = now_ms << _ULID_RANDOM_BITS | secrets.randbits(_ULID_RANDOM_BITS)
            else:
                # Same (or an earlier) millisecond: the previous id plus one keeps the order.
                self._last += 1
            value = self._last
        return "".join([_PAIRS[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


_minter = UlidMinter()  # one per process: ids minted here never go backwards


def mint_client_message_id(now_ms: int) -> str:
    """A fresh 26-char Crockford base32 ULID: 48-bit ms time then 80 random bits.

    Ids sort by time; two minted in the same millisecond by this process still sort in
    minting order. Outbox row ids are minted the same way.
    """
    return _minter.mint(now_ms)
