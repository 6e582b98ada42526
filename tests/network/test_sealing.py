"""Sealed peer frames with real keys and a real Box: altered, replayed and reflected frames drop."""

import random
import struct
import time

import pytest
from nacl.public import Box
from nacl.signing import SigningKey

from meshactors.network.replay import REPLAY_WINDOW_SIZE
from meshactors.network.sealing import (
    MIN_SEALED_BYTES,
    SEAL_NONCE_BYTES,
    FrameRejected,
    OpenerMemory,
    PeerCrypto,
    PeerOpener,
    PeerSealer,
    _EpochClock,
)
from meshactors.wire.device_id import InvalidDeviceId, device_id_from_public_key

NONCE = struct.Struct(">QQ8s")


def device_id(key: SigningKey) -> str:
    return device_id_from_public_key(bytes(key.verify_key))


@pytest.fixture
def alice() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def bob() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def sealer(alice: SigningKey, bob: SigningKey) -> PeerSealer:
    """Alice's sender session towards Bob."""
    return PeerSealer.for_peer(alice, device_id(bob))


@pytest.fixture
def opener(alice: SigningKey, bob: SigningKey) -> PeerOpener:
    """Bob's receiver for Alice's frames."""
    return PeerOpener.for_peer(bob, device_id(alice))


def rejected(opener: PeerOpener, sealed: bytes) -> str:
    with pytest.raises(FrameRejected) as info:
        opener.open(sealed)
    return info.value.reason


def test_round_trip_both_ways_with_counts(alice: SigningKey, bob: SigningKey) -> None:
    at_alice = PeerCrypto.for_peer(alice, device_id(bob))
    at_bob = PeerCrypto.for_peer(bob, device_id(alice))
    assert at_bob.open(at_alice.seal(b"hello bob")) == b"hello bob"
    assert at_alice.open(at_bob.seal(b"hello alice")) == b"hello alice"
    assert at_bob.open(at_alice.seal(b"")) == b""
    assert at_alice.stats == {"opened": 1, "tampered": 0, "replayed": 0, "sealed": 2}
    assert at_bob.stats == {"opened": 2, "tampered": 0, "replayed": 0, "sealed": 1}


def test_sealed_bytes_are_box_encrypt_output_with_epoch_counter_direction_nonce(
    alice: SigningKey, bob: SigningKey, sealer: PeerSealer
) -> None:
    first, second = sealer.seal(b"one"), sealer.seal(b"two")
    stock = Box(alice.to_curve25519_private_key(), bob.verify_key.to_curve25519_public_key())
    assert stock.decrypt(second) == b"two"
    assert first == bytes(stock.encrypt(b"one", first[:SEAL_NONCE_BYTES]))
    assert NONCE.unpack_from(first)[:2] == (sealer.epoch, 1)
    assert NONCE.unpack_from(second)[:2] == (sealer.epoch, 2)
    assert len(first) == MIN_SEALED_BYTES + len(b"one")


def test_the_two_directions_stamp_different_nonce_tails(alice: SigningKey, bob: SigningKey) -> None:
    to_bob = PeerSealer.for_peer(alice, device_id(bob)).seal(b"x")
    to_alice = PeerSealer.for_peer(bob, device_id(alice)).seal(b"x")
    tails = {to_bob[16:SEAL_NONCE_BYTES], to_alice[16:SEAL_NONCE_BYTES]}
    assert tails == {bytes(8), bytes(7) + b"\x01"}


def test_epochs_strictly_increase_within_the_process(alice: SigningKey, bob: SigningKey) -> None:
    epochs = [PeerSealer.for_peer(alice, device_id(bob)).epoch for _ in range(200)]
    assert epochs == sorted(set(epochs))


def test_epochs_keep_increasing_when_the_wall_clock_is_behind_the_last_one() -> None:
    ahead = time.time_ns() + 10**12  # as if the clock stepped back 1000 s since the last epoch
    clock = _EpochClock(last=ahead)
    assert (clock.next(), clock.next()) == (ahead + 1, ahead + 2)


def test_a_flipped_bit_anywhere_is_tampered_and_does_not_poison_the_window(
    sealer: PeerSealer, opener: PeerOpener
) -> None:
    opener.open(sealer.seal(b"first"))
    genuine = sealer.seal(b"second frame")
    for index in range(len(genuine)):
        for bit in (0x01, 0x80):
            altered = bytearray(genuine)
            altered[index] ^= bit
            assert rejected(opener, bytes(altered)) == "tampered", index
    assert opener.open(genuine) == b"second frame"
    assert opener.stats == {"opened": 2, "tampered": 2 * len(genuine), "replayed": 0}


def test_truncated_frames_are_tampered(sealer: PeerSealer, opener: PeerOpener) -> None:
    genuine = sealer.seal(b"payload")
    shortest = MIN_SEALED_BYTES
    for length in (0, 1, SEAL_NONCE_BYTES, shortest - 1, shortest, len(genuine) - 1):
        assert rejected(opener, genuine[:length]) == "tampered", length
    assert opener.open(genuine) == b"payload"


def test_a_frame_opened_twice_is_replayed(sealer: PeerSealer, opener: PeerOpener) -> None:
    frame = sealer.seal(b"once")
    assert opener.open(frame) == b"once"
    assert rejected(opener, frame) == "replayed"
    assert opener.stats == {"opened": 1, "tampered": 0, "replayed": 1}


def test_reordered_frames_inside_the_window_open_exactly_once(
    sealer: PeerSealer, opener: PeerOpener
) -> None:
    frames = [sealer.seal(str(n).encode()) for n in range(200)]
    shuffled = list(enumerate(frames))
    random.Random(7).shuffle(shuffled)
    for n, frame in shuffled:
        assert opener.open(frame) == str(n).encode()
    for _, frame in shuffled:
        assert rejected(opener, frame) == "replayed"
    assert opener.stats == {"opened": 200, "tampered": 0, "replayed": 200}


def test_a_counter_older_than_the_window_is_replayed(
    sealer: PeerSealer, opener: PeerOpener
) -> None:
    frames = [sealer.seal(b"") for _ in range(REPLAY_WINDOW_SIZE + 2)]
    opener.open(frames[-1])  # counter 1026
    assert rejected(opener, frames[0]) == "replayed"  # counter 1: 1025 behind
    assert rejected(opener, frames[1]) == "replayed"  # counter 2: 1024 behind, just outside
    assert opener.open(frames[2]) == b""  # counter 3: the oldest still inside


def test_sender_restart_resets_the_window_and_retires_the_old_epoch(
    alice: SigningKey, bob: SigningKey, sealer: PeerSealer, opener: PeerOpener
) -> None:
    old_first, old_second = sealer.seal(b"old 1"), sealer.seal(b"old 2")
    assert opener.open(old_first) == b"old 1"
    restarted = PeerSealer.for_peer(alice, device_id(bob))
    assert restarted.epoch > sealer.epoch
    assert opener.open(restarted.seal(b"new 1")) == b"new 1"  # counter 1 again: window reset
    assert opener.epoch == restarted.epoch
    assert rejected(opener, old_second) == "replayed"  # never seen, but its session is dead
    assert rejected(opener, old_first) == "replayed"
    assert opener.open(restarted.seal(b"new 2")) == b"new 2"


def test_a_frame_reflected_back_to_its_sender_is_replayed(
    alice: SigningKey, bob: SigningKey
) -> None:
    at_bob = PeerCrypto.for_peer(bob, device_id(alice))
    from_bob = at_bob.seal(b"from bob")
    at_alice = PeerCrypto.for_peer(alice, device_id(bob))  # newer epoch than Bob's session
    at_alice.open(from_bob)
    reflected = at_alice.seal(b"alice's own words")
    assert rejected(at_alice.opener, reflected) == "replayed"
    assert at_bob.open(reflected) == b"alice's own words"


def test_a_frame_sealed_for_a_third_party_is_tampered(
    alice: SigningKey, bob: SigningKey, opener: PeerOpener
) -> None:
    carol = SigningKey.generate()
    for_carol = PeerSealer.for_peer(alice, device_id(carol)).seal(b"for carol only")
    assert rejected(opener, for_carol) == "tampered"
    from_carol = PeerSealer.for_peer(carol, device_id(bob)).seal(b"carol posing as alice")
    assert rejected(opener, from_carol) == "tampered"


def test_a_forged_frame_with_a_huge_counter_or_epoch_moves_nothing(
    sealer: PeerSealer, opener: PeerOpener
) -> None:
    first, second = sealer.seal(b"1"), sealer.seal(b"2")
    opener.open(first)
    genuine_tail = first[16:SEAL_NONCE_BYTES]
    noise = random.Random(1).randbytes(40)
    for epoch, counter in ((sealer.epoch, 2**63), (sealer.epoch + 10**18, 1)):
        forged = NONCE.pack(epoch, counter, genuine_tail) + noise
        assert rejected(opener, forged) == "tampered"
    assert opener.epoch == sealer.epoch
    assert opener.open(second) == b"2"  # had the window jumped to 2**63, counter 2 would be stale


def test_peer_ids_that_are_not_usable_keys_are_refused(alice: SigningKey) -> None:
    with pytest.raises(InvalidDeviceId):
        PeerSealer.for_peer(alice, "not-a-device-id")
    with pytest.raises(InvalidDeviceId, match="not a usable key"):
        PeerOpener.for_peer(alice, device_id_from_public_key(bytes(32)))
    with pytest.raises(InvalidDeviceId, match="our own device id"):
        PeerCrypto.for_peer(alice, device_id(alice))


def test_a_remembered_opener_refuses_in_a_new_crypto_what_it_refused_before(
    alice: SigningKey, bob: SigningKey
) -> None:
    memory = OpenerMemory()
    sending = PeerCrypto.for_peer(alice, device_id(bob))
    receiving = PeerCrypto.for_peer(bob, device_id(alice))
    memory.keep(device_id(alice), PeerCrypto.for_peer(bob, device_id(alice)).opener)
    assert len(memory) == 0  # it never opened a frame: nothing of it could be replayed
    earlier = sending.seal(b"once")
    assert receiving.open(earlier) == b"once"
    memory.keep(device_id(alice), receiving.opener)
    again = PeerCrypto.for_peer(bob, device_id(alice), memory.take(device_id(alice)))
    assert len(memory) == 0
    with pytest.raises(FrameRejected, match="replayed"):
        again.open(earlier)
    assert again.open(sending.seal(b"next")) == b"next"


def test_the_opener_memory_forgets_the_one_let_go_longest_ago(bob: SigningKey) -> None:
    memory = OpenerMemory(limit=2)
    senders = [SigningKey.generate() for _ in range(3)]
    for sender in senders:
        crypto = PeerCrypto.for_peer(bob, device_id(sender))
        crypto.open(PeerCrypto.for_peer(sender, device_id(bob)).seal(b"x"))
        memory.keep(device_id(sender), crypto.opener)
    assert (len(memory), memory.forgotten) == (2, 1)
    assert memory.take(device_id(senders[0])) is None
    assert all(memory.take(device_id(sender)) is not None for sender in senders[1:])
