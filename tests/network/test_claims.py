"""The claim table without sockets: last claim wins, owners by identity, the limit holds."""

from __future__ import annotations

import pytest

from meshactors.network.claims import ClaimTable
from meshactors.wire.ipc import ErrorCode, OpError


class Owner:
    """A stand-in connection: claims compare owners by identity only."""


def test_last_claim_wins_and_names_the_displaced_owner() -> None:
    table: ClaimTable[Owner] = ClaimTable()
    first, second = Owner(), Owner()
    assert table.claim(first, "echo", streaming=False) is None
    assert table.claim(second, "echo", streaming=True) is first
    claim = table.get("echo")
    assert claim is not None and claim.owner is second and claim.streaming
    assert table.methods_of(first) == []


def test_reclaiming_by_the_same_owner_displaces_no_one() -> None:
    table: ClaimTable[Owner] = ClaimTable()
    owner = Owner()
    table.claim(owner, "echo", streaming=False)
    assert table.claim(owner, "echo", streaming=True) is None
    assert len(table) == 1


def test_only_the_owner_releases_its_claim() -> None:
    table: ClaimTable[Owner] = ClaimTable()
    owner, other = Owner(), Owner()
    table.claim(owner, "echo", streaming=False)
    assert not table.release(other, "echo")
    assert not table.release(owner, "missing")
    assert table.release(owner, "echo")
    assert table.get("echo") is None


def test_the_limit_refuses_new_methods_but_not_takeovers() -> None:
    table: ClaimTable[Owner] = ClaimTable(limit=2)
    owner, other = Owner(), Owner()
    table.claim(owner, "a", streaming=False)
    table.claim(owner, "b", streaming=False)
    with pytest.raises(OpError) as refused:
        table.claim(owner, "c", streaming=False)
    assert refused.value.code == ErrorCode.CONFLICT
    assert table.claim(other, "a", streaming=False) is owner


def test_drop_owners_releases_only_the_picked_owners_claims() -> None:
    table: ClaimTable[Owner] = ClaimTable()
    gone, stays = Owner(), Owner()
    table.claim(gone, "a", streaming=False)
    table.claim(stays, "b", streaming=False)
    table.claim(gone, "c", streaming=True)
    assert table.drop_owners(lambda owner: owner is gone) == ["a", "c"]
    assert [method for method, _ in table.items()] == ["b"]


def test_clear_hands_back_every_claim_for_its_owner_to_be_told() -> None:
    table: ClaimTable[Owner] = ClaimTable()
    owner = Owner()
    table.claim(owner, "a", streaming=False)
    table.claim(owner, "b", streaming=True)
    held = table.clear()
    assert [(method, claim.owner, claim.streaming) for method, claim in held] == [
        ("a", owner, False),
        ("b", owner, True),
    ]
    assert len(table) == 0
