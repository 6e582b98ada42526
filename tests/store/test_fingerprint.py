"""Request fingerprints (canonical form, what changes them) and minted ULIDs."""

import hashlib
import itertools
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshactors.store.fingerprint import (
    UlidMinter,
    fingerprint_prefix,
    mint_client_message_id,
    request_fingerprint,
)

ULID_CHARS = 26  # Crockford base32 characters of a 128-bit ULID

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def fingerprint(**changes: Any) -> bytes:
    request: dict[str, Any] = {
        "destination_kind": "peer",
        "destination_ref": "dev1",
        "reply_to_id": None,
        "priority": "next",
        "meta": {"a": 1},
        "body": "héllo".encode(),
    }
    request.update(changes)
    return request_fingerprint(**request)


def ulid_value(ulid: str) -> int:
    """The 128-bit value a ULID spells, decoded one Crockford character at a time."""
    value = 0
    for char in ulid:
        value = value * 32 + CROCKFORD.index(char)
    return value


def ulid_time_ms(ulid: str) -> int:
    return ulid_value(ulid) >> 80


@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_consecutive_ids_spell_consecutive_values(now_ms: int) -> None:
    """Every bit of the value is spelled right: two ids of one millisecond differ by one."""
    minter = UlidMinter()
    first, second = minter.mint(now_ms), minter.mint(now_ms)
    assert len(first) == len(second) == ULID_CHARS
    assert ulid_value(second) == ulid_value(first) + 1
    assert ulid_value(first) >> 80 == now_ms


def test_fingerprint_is_sha256_of_the_documented_canonical_form() -> None:
    body_sha = hashlib.sha256("héllo".encode()).hexdigest()
    canonical = (
        f'{{"body_sha256":"{body_sha}","dest_kind":"peer","dest_ref":"dev1",'
        '"meta":{"a":1,"é":[1,{"x":null}]},"priority":"now","reply_to_id":"r1","v":1}'
    )
    got = fingerprint(priority="now", reply_to_id="r1", meta={"é": [1, {"x": None}], "a": 1})
    assert got == hashlib.sha256(canonical.encode("utf-8")).digest()


def test_meta_key_order_is_irrelevant_at_every_depth() -> None:
    one = fingerprint(meta={"a": 1, "b": {"x": 1, "y": [{"p": 1, "q": 2}]}})
    two = fingerprint(meta={"b": {"y": [{"q": 2, "p": 1}], "x": 1}, "a": 1})
    assert one == two


@pytest.mark.parametrize(
    "change",
    [
        {"destination_kind": "tag"},
        {"destination_ref": "dev2"},
        {"reply_to_id": "m1"},
        {"priority": "now"},
        {"meta": {"a": 2}},
        {"meta": None},
        {"body": b"hello"},
    ],
)
def test_any_other_change_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert fingerprint(**change) != fingerprint()


def test_prefix_is_the_first_16_hex_chars() -> None:
    fp = fingerprint()
    assert fingerprint_prefix(fp) == fp.hex()[:16]
    assert len(fingerprint_prefix(fp)) == 16


def test_minted_ids_are_crockford_ulids_carrying_the_time() -> None:
    ulid = UlidMinter().mint(1_700_000_000_123)
    assert len(ulid) == ULID_CHARS
    assert set(ulid) <= set(CROCKFORD)
    assert ulid_time_ms(ulid) == 1_700_000_000_123


def test_minted_ids_sort_by_time() -> None:
    minter = UlidMinter()
    ids = [minter.mint(now) for now in (5_000, 5_001, 6_000, 1_000_000)]
    assert ids == sorted(ids)
    assert [ulid_time_ms(ulid) for ulid in ids] == [5_000, 5_001, 6_000, 1_000_000]


def test_ids_minted_in_one_millisecond_strictly_increase() -> None:
    minter = UlidMinter()
    ids = [minter.mint(9_000_000) for _ in range(1000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert {ulid_time_ms(ulid) for ulid in ids} == {9_000_000}


def test_a_clock_step_back_never_reorders_ids() -> None:
    minter = UlidMinter()
    later = minter.mint(20_000_000)
    assert minter.mint(10_000_000) > later


def test_the_process_minter_gives_ulids() -> None:
    ulid = mint_client_message_id(1_700_000_000_000)
    assert len(ulid) == ULID_CHARS
    assert set(ulid) <= set(CROCKFORD)


def test_minting_from_many_threads_gives_unique_ids() -> None:
    minted: list[list[str]] = [[] for _ in range(8)]

    def mint_many(bucket: list[str]) -> None:
        bucket.extend(mint_client_message_id(30_000_000) for _ in range(500))

    threads = [threading.Thread(target=mint_many, args=(bucket,)) for bucket in minted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [ulid for bucket in minted for ulid in bucket]
    assert len(set(every)) == len(every) == 4000


@pytest.mark.parametrize("now_ms", [-1, 1 << 48])
def test_time_outside_48_bits_is_refused(now_ms: int) -> None:
    with pytest.raises(ValueError, match="ULID range"):
        UlidMinter().mint(now_ms)
