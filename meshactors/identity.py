"""The device's Ed25519 identity: created on first use and kept in a private JSON file.

Stored as `{"version": 1, "secret_key": <base64 32-byte seed>, "label": <str or null>}`, 0600.
A file we cannot use is reported, never overwritten: losing it would change the device id.
"""

import base64
from pathlib import Path

import attrs
import nacl.bindings
import nacl.signing

from meshactors.paths import RefusedFile, read_private_record, write_private_record
from meshactors.wire.device_id import device_id_from_public_key

IDENTITY_FILE_VERSION = 1  # bump when the file's keys or encoding change
IDENTITY_FILE_MAX_BYTES = 4096  # a real identity file is about 100 bytes
LABEL_MAX_CHARS = 64  # labels appear in peer lists: one short line
SEED_BYTES = nacl.bindings.crypto_sign_SEEDBYTES  # an Ed25519 secret key is stored as its seed
_FIELDS = frozenset({"version", "secret_key", "label"})


class IdentityError(Exception):
    """The identity file exists but cannot be used (unreadable, corrupt, other version)."""


def validate_label(label: str | None) -> str | None:
    """Return `label` if it is None or 1-64 printable characters; else raise a ValueError."""
    if label is None:
        return None
    if not label:
        raise ValueError("label must not be empty (use None to remove it)")
    if len(label) > LABEL_MAX_CHARS:
        raise ValueError(f"label is {len(label)} characters long; the limit is {LABEL_MAX_CHARS}")
    if not label.isprintable():
        raise ValueError("label must be printable text on one line (no control characters)")
    return label


@attrs.frozen
class Identity:
    """This device's signing key and optional human label; its device id derives from the key."""

    signing_key: nacl.signing.SigningKey = attrs.field(repr=False)
    label: str | None = attrs.field(default=None)

    @label.validator
    def _check_label(self, _attribute: "attrs.Attribute[str | None]", value: str | None) -> None:
        validate_label(value)

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @property
    def device_id(self) -> str:
        """The device id peers and the broker know us by."""
        return device_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature of `message`."""
        return self.signing_key.sign(message).signature


def load_or_create_identity(path: Path) -> Identity:
    """Load the identity at `path`, creating a new key there on first use.

    Raises IdentityError, naming `path`, when the file exists but is unusable.
    """
    existing = _read(path)
    if existing is not None:
        return existing
    created = Identity(nacl.signing.SigningKey.generate())
    try:
        _write(path, created, replace=False)
    except FileExistsError:
        winner = _read(path)  # another process created it first: everyone uses theirs
        if winner is None:
            raise IdentityError(f"identity file {path} exists but cannot be opened") from None
        return winner
    return created


def set_identity_label(path: Path, label: str | None) -> Identity:
    """Set (or with None, remove) the identity's label and store it; the key is unchanged."""
    validate_label(label)  # before creating or touching anything
    updated = attrs.evolve(load_or_create_identity(path), label=label)
    _write(path, updated, replace=True)
    return updated


def _read(path: Path) -> Identity | None:
    """The identity stored at `path`, or None when there is no file yet."""
    try:
        record = read_private_record(
            path, version=IDENTITY_FILE_VERSION, fields=_FIELDS, max_bytes=IDENTITY_FILE_MAX_BYTES
        )
        secret_key, label = record["secret_key"], record["label"]
        if not isinstance(secret_key, str):
            raise ValueError("secret_key is not a string")
        if label is not None and not isinstance(label, str):
            raise ValueError("label is neither a string nor null")
        seed = base64.b64decode(secret_key, validate=True)
        if len(seed) != SEED_BYTES:
            raise ValueError(f"secret_key is {len(seed)} bytes, not {SEED_BYTES}")
        return Identity(nacl.signing.SigningKey(seed), label)
    except FileNotFoundError:
        return None
    except RefusedFile:
        raise  # told like every other file of the home (its own code), not as unusable
    except (OSError, ValueError) as exc:
        raise IdentityError(
            f"identity file {path} is unusable ({exc}); it was left untouched: "
            "restore it from a backup or move it away to create a new identity"
        ) from exc


def _write(path: Path, identity: Identity, *, replace: bool) -> None:
    """Store `identity` at `path` atomically, mode 0600."""
    record = {
        "version": IDENTITY_FILE_VERSION,
        "secret_key": base64.b64encode(bytes(identity.signing_key)).decode("ascii"),
        "label": identity.label,
    }
    try:
        write_private_record(path, record, replace=replace)
    except FileExistsError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot write identity file {path}: {exc.strerror or exc}") from exc
