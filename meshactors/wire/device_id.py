"""Device ids: the unpadded lowercase base32 of a device's 32-byte Ed25519 public key."""

import base64
import binascii
import functools

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

PUBLIC_KEY_BYTES = 32
DEVICE_ID_LENGTH = 52  # ceil(32 * 8 / 5) base32 characters, no padding
CONVERSION_CACHE = 4096  # ids and keys whose conversions are remembered (a send checks ~4)
SHORT_ID = 12  # characters of a device id shown to people (tables, messages to a caller)


class InvalidDeviceId(ValueError):
    """Raised when a string is not a well-formed device id."""


@functools.lru_cache(maxsize=CONVERSION_CACHE)
def device_id_from_public_key(public_key: bytes) -> str:
    """Encode a raw Ed25519 public key as its device id."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidDeviceId(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


@functools.lru_cache(maxsize=CONVERSION_CACHE)
def public_key_from_device_id(device_id: str) -> bytes:
    """Decode a device id back to the raw public key; strict about case, length and alphabet."""
    if len(device_id) != DEVICE_ID_LENGTH or device_id != device_id.lower():
        raise InvalidDeviceId(f"not a device id: {device_id[:60]!r}")
    try:
        raw = base64.b32decode(device_id.upper() + "====", casefold=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidDeviceId(f"not a device id: {device_id!r}") from exc
    if device_id_from_public_key(raw) != device_id:
        raise InvalidDeviceId(f"not a canonical device id: {device_id!r}")
    return raw


def is_device_id(value: str) -> bool:
    """True when `value` is a canonical device id."""
    try:
        public_key_from_device_id(value)
    except InvalidDeviceId:
        return False
    return True


@functools.lru_cache(maxsize=CONVERSION_CACHE)
def is_usable_device_id(value: str) -> bool:
    """True when `value` is a device id whose key can seal frames (a point on the curve): a
    well-formed id that is not can never be a peer, so sending to it is refused, not queued."""
    if not is_device_id(value):
        return False
    try:
        VerifyKey(public_key_from_device_id(value)).to_curve25519_public_key()
    except (CryptoError, ValueError):
        return False
    return True


def device_name(device_id: str, label: str | None) -> str:
    """A device as a message names it for people: `LABEL (SHORT-ID)`, or the short id alone."""
    short = device_id[:SHORT_ID]
    return short if label is None else f"{label} ({short})"
