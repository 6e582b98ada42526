"""Sealed peer frames: NaCl Box between two devices' keys, with replay protection.

Every frame between two daemons is sealed with a `Box` between the sender's and the receiver's
Ed25519 keys converted to Curve25519. The shared key is computed once per peer. A sealed frame
is exactly `Box.encrypt(plaintext, nonce)`'s output, nonce || ciphertext:

    epoch (8, big-endian) | counter (8, big-endian) | direction (8) | MAC (16) | payload

- epoch: the sender's session start, `time.time_ns()` when its `PeerSealer` for this peer was
  created, made strictly increasing within the process.
- counter: 1 for the session's first frame, +1 per frame.
- direction: 8 zero bytes from the device whose public key sorts lower, 7 zero bytes and 0x01
  from the other. The Box key is the same both ways (X25519 is symmetric), so without this the
  broker could reflect a device's own frames back to it as the peer's, and two sessions that
  happened to share an epoch would reuse nonces under one key.

The broker may replay, reorder, drop, reflect or alter bytes. `PeerOpener.open` keeps, per
peer, the newest epoch seen and a `ReplayWindow` over that epoch's counters. It decrypts first,
so the reason it gives with `FrameRejected` is exact:

1. shorter than nonce + MAC, or decryption fails → `tampered` (whatever nonce it claims);
2. authentic, but stamped with our own direction (our frame reflected back), from an epoch older
   than the newest seen (a dead session), or with a counter already seen or below the window
   → `replayed`.

Only an accepted frame changes state: a newer epoch (the peer restarted) replaces the window,
then the counter is marked. A forged frame therefore never moves the window.

The peer table builds a peer's state anew when it let the peer go (it left and no roster keeps
it, roster_remove) or when the table itself is rebuilt (core or the networks supervisor
restarted). A new opener would accept any epoch and counter once more, so the broker could hand
us that peer's earlier frames again. `OpenerMemory` keeps the openers the table let go, by device
id, and a peer's new state takes its old opener back: what it refused before, it refuses still.
"""

import collections
import struct
import time
from typing import Literal

import attrs
from nacl.bindings import crypto_box_easy_afternm, crypto_box_open_easy_afternm
from nacl.exceptions import CryptoError
from nacl.public import Box
from nacl.signing import SigningKey, VerifyKey

from meshactors.network.replay import ReplayWindow
from meshactors.wire.device_id import InvalidDeviceId, public_key_from_device_id

_NONCE = struct.Struct(">QQ8s")  # epoch, counter, direction: the 24-byte Box nonce
SEAL_NONCE_BYTES = _NONCE.size  # 24, as Box.NONCE_SIZE requires
MAC_BYTES = 16  # Poly1305 tag at the head of every Box ciphertext
MIN_SEALED_BYTES = SEAL_NONCE_BYTES + MAC_BYTES  # a sealed empty frame; shorter is tampered
_FROM_LOWER_KEY = bytes(8)  # direction stamped by the device whose public key sorts lower
_FROM_HIGHER_KEY = bytes(7) + b"\x01"  # direction stamped by the other device

REMEMBERED_OPENERS = 4096  # peers per network whose replay state outlives their table entry

RejectReason = Literal["tampered", "replayed"]


class FrameRejected(Exception):
    """Raised when a sealed frame is dropped; `reason` says whether it was altered or replayed."""

    def __init__(self, reason: RejectReason) -> None:
        super().__init__(f"sealed frame rejected: {reason}")
        self.reason: RejectReason = reason


@attrs.define
class _EpochClock:
    """Hands out session epochs: wall-clock nanoseconds, strictly increasing within the process."""

    last: int = 0

    def next(self) -> int:
        """The next epoch: now, or one past the previous epoch if the clock has not moved on."""
        self.last = max(time.time_ns(), self.last + 1)
        return self.last


_EPOCHS = _EpochClock()


@attrs.frozen
class _PeerKeys:
    """What both halves of a peer's sealing share: the Box key and each way's direction stamp."""

    shared_key: bytes = attrs.field(repr=False)
    outbound: bytes
    inbound: bytes


def _peer_keys(signing_key: SigningKey, peer_device_id: str) -> _PeerKeys:
    """Precompute the Box between our key and the peer's; InvalidDeviceId if theirs is unusable."""
    peer_public = public_key_from_device_id(peer_device_id)
    own_public = bytes(signing_key.verify_key)
    if peer_public == own_public:
        raise InvalidDeviceId(f"cannot seal frames to our own device id: {peer_device_id!r}")
    try:
        box = Box(
            signing_key.to_curve25519_private_key(),
            VerifyKey(peer_public).to_curve25519_public_key(),
        )
    except CryptoError as exc:
        raise InvalidDeviceId(f"device id is not a usable key: {peer_device_id!r}") from exc
    if own_public < peer_public:
        return _PeerKeys(box.shared_key(), _FROM_LOWER_KEY, _FROM_HIGHER_KEY)
    return _PeerKeys(box.shared_key(), _FROM_HIGHER_KEY, _FROM_LOWER_KEY)


@attrs.define
class PeerSealer:
    """Seals frames to one peer under this session's epoch and a running counter."""

    _key: bytes = attrs.field(repr=False)
    _direction: bytes
    epoch: int = attrs.field(factory=_EPOCHS.next, init=False)
    sealed: int = attrs.field(default=0, init=False)  # frames sealed; also the last counter used

    @classmethod
    def for_peer(cls, signing_key: SigningKey, peer_device_id: str) -> "PeerSealer":
        """A new sender session (fresh epoch) from our signing key to `peer_device_id`."""
        keys = _peer_keys(signing_key, peer_device_id)
        return cls(keys.shared_key, keys.outbound)

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and authenticate one frame; returns nonce || Box ciphertext."""
        self.sealed += 1
        nonce = _NONCE.pack(self.epoch, self.sealed, self._direction)
        return nonce + crypto_box_easy_afternm(plaintext, nonce, self._key)


@attrs.define
class PeerOpener:
    """Opens frames from one peer, dropping altered and replayed ones and counting both."""

    _key: bytes = attrs.field(repr=False)
    _direction: bytes
    epoch: int = attrs.field(default=0, init=False)  # the peer's newest session seen
    _window: ReplayWindow = attrs.field(factory=ReplayWindow, init=False)
    opened: int = attrs.field(default=0, init=False)
    tampered: int = attrs.field(default=0, init=False)
    replayed: int = attrs.field(default=0, init=False)

    @classmethod
    def for_peer(cls, signing_key: SigningKey, peer_device_id: str) -> "PeerOpener":
        """A receiver for frames that `peer_device_id` sealed to our signing key."""
        keys = _peer_keys(signing_key, peer_device_id)
        return cls(keys.shared_key, keys.inbound)

    @property
    def stats(self) -> dict[str, int]:
        """Frames opened and rejected so far, shown per peer by peers_list."""
        return {"opened": self.opened, "tampered": self.tampered, "replayed": self.replayed}

    def open(self, sealed: bytes) -> bytes:
        """Authenticate and decrypt one sealed frame; FrameRejected if altered or replayed."""
        if len(sealed) < MIN_SEALED_BYTES:
            raise self._reject("tampered")
        try:
            plaintext = crypto_box_open_easy_afternm(
                sealed[SEAL_NONCE_BYTES:], sealed[:SEAL_NONCE_BYTES], self._key
            )
        except CryptoError:
            raise self._reject("tampered") from None
        epoch, counter, direction = _NONCE.unpack_from(sealed)
        if direction != self._direction or epoch < self.epoch:
            raise self._reject("replayed")
        window = self._window if epoch == self.epoch else ReplayWindow(self._window.size)
        if not window.check(counter):
            raise self._reject("replayed")
        self.epoch = epoch
        self._window = window
        window.mark(counter)
        self.opened += 1
        return plaintext

    def _reject(self, reason: RejectReason) -> FrameRejected:
        """Count a dropped frame and build the error to raise."""
        if reason == "tampered":
            self.tampered += 1
        else:
            self.replayed += 1
        return FrameRejected(reason)


@attrs.define
class PeerCrypto:
    """Both halves of one peer's sealing, sharing one Box precomputation."""

    sealer: PeerSealer
    opener: PeerOpener

    @classmethod
    def for_peer(
        cls, signing_key: SigningKey, peer_device_id: str, opener: PeerOpener | None = None
    ) -> "PeerCrypto":
        """Sealer (a new session) and opener between our signing key and `peer_device_id`;
        `opener`, that peer's remembered one, keeps refusing what it refused before."""
        keys = _peer_keys(signing_key, peer_device_id)
        return cls(
            PeerSealer(keys.shared_key, keys.outbound),
            opener if opener is not None else PeerOpener(keys.shared_key, keys.inbound),
        )

    @property
    def stats(self) -> dict[str, int]:
        """The opener's figures plus frames sealed."""
        return {**self.opener.stats, "sealed": self.sealer.sealed}

    def seal(self, plaintext: bytes) -> bytes:
        """Seal one frame to the peer."""
        return self.sealer.seal(plaintext)

    def open(self, sealed: bytes) -> bytes:
        """Open one frame from the peer."""
        return self.opener.open(sealed)


@attrs.define
class OpenerMemory:
    """The openers of peers the table let go, by device id, so a peer seen again resumes its
    replay state; at most `limit`, the one let go longest ago forgotten first."""

    limit: int = REMEMBERED_OPENERS
    forgotten: int = 0  # openers pushed out by newer ones: those peers' old frames open again
    _openers: collections.OrderedDict[str, PeerOpener] = attrs.field(
        factory=collections.OrderedDict
    )

    def __len__(self) -> int:
        return len(self._openers)

    def keep(self, device_id: str, opener: PeerOpener) -> None:
        """Remember a let-go peer's opener, if it ever opened one frame (else none to refuse)."""
        if not opener.epoch:
            return
        self._openers.pop(device_id, None)
        self._openers[device_id] = opener
        if len(self._openers) > self.limit:
            self._openers.popitem(last=False)
            self.forgotten += 1

    def take(self, device_id: str) -> PeerOpener | None:
        """The peer's remembered opener, handed over (no longer kept here), or None."""
        return self._openers.pop(device_id, None)
