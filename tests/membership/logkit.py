"""Devices and facts for membership log tests, signed by real keys."""

from __future__ import annotations

import attrs
import nacl.signing

from meshactors.identity import Identity
from meshactors.membership.facts import (
    NONCE_BYTES,
    SIG_CHARS,
    Fact,
    Genesis,
    Invite,
    new_genesis,
    nonce,
    sign,
)
from meshactors.membership.log import MembershipLog

NET = "team"
UNSIGNED = "A" * SIG_CHARS


def device() -> Identity:
    return Identity(nacl.signing.SigningKey.generate())


def seeded_device(seed: int) -> Identity:
    """The device whose key `seed` (1 to 255) fixes: the same in every run of the tests."""
    return Identity(nacl.signing.SigningKey(bytes([seed]) * 32))


def new_log(owner: Identity, at_ms: int = 1000) -> MembershipLog:
    return MembershipLog(new_genesis(owner, NET, at_ms))


def seeded_log(owner: Identity) -> MembershipLog:
    """A log whose genesis has a fixed nonce, so that a seeded owner's facts hash alike in
    every run: a generated log that resolves by its hashes then replays as it first ran."""
    unsigned = Genesis(NET, owner.device_id, 1000, "00" * NONCE_BYTES, UNSIGNED)
    return MembershipLog(sign(owner, unsigned))


def fact(
    log: MembershipLog,
    author: Identity,
    kind: str,
    target: Identity | str,
    role: str = "",
    at_ms: int = 2000,
    parents: list[str] | None = None,
    invite: Invite | None = None,
    network: str = NET,
) -> Fact:
    """A signed fact following the log's heads (or `parents`)."""
    device_id = target if isinstance(target, str) else target.device_id
    unsigned = Fact(
        network,
        log.genesis_hash,
        author.device_id,
        kind,
        device_id,
        role,
        at_ms,
        sorted(parents if parents is not None else log.heads()),
        invite,
        UNSIGNED,
    )
    return sign(author, unsigned)


def invite(
    log: MembershipLog,
    issuer: Identity,
    role: str = "member",
    expires_ms: int = 10_000,
    uses: int = 1,
) -> Invite:
    unsigned = Invite(
        NET, log.genesis_hash, issuer.device_id, role, expires_ms, uses, nonce(), UNSIGNED
    )
    return sign(issuer, unsigned)


def accept(log: MembershipLog, *facts: Fact) -> None:
    for one in facts:
        log.check(one)
        assert not log.missing(one)
        log.add([one])


def forged(record: Fact) -> Fact:
    return attrs.evolve(record, at_ms=record.at_ms + 1)
