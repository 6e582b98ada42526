"""The broker's replay memory: a hello's nonce is admitted once while the hello could pass."""

import pytest
from nacl.signing import SigningKey

from meshactors.broker.nonces import NonceCache, source_of
from meshactors.wire.broker import (
    MAX_CLOCK_SKEW_MS,
    HelloRejected,
    RejectReason,
    VerifiedHello,
    build_hello,
    verify_hello,
)

NOW = 1_700_000_000_000
KEY = SigningKey(bytes(range(32)))
SOURCE, FLOOD, FLEET, OTHER = "192.0.2.1", "198.51.100.7", "203.0.113.9", "2001:db8::/64"


def _hello(ts_ms: int) -> VerifiedHello:
    """A valid hello with a fresh nonce, written at `ts_ms`."""
    return verify_hello(build_hello(KEY, "net-1", "daemon", now_ms=ts_ms), now_ms=ts_ms)


def test_nonce_cache_refuses_a_replay_until_the_hello_would_be_stale() -> None:
    cache = NonceCache()
    hello = verify_hello(build_hello(KEY, "net-1", "daemon", now_ms=NOW), now_ms=NOW)
    cache.admit(hello, source=SOURCE, now_ms=NOW)
    with pytest.raises(HelloRejected) as caught:
        cache.admit(hello, source=SOURCE, now_ms=NOW + MAX_CLOCK_SKEW_MS)
    assert caught.value.reason == RejectReason.REPLAYED_NONCE
    assert caught.value.close_code == 4401
    cache.admit(_hello(NOW), source=SOURCE, now_ms=NOW + 1)
    assert len(cache) == 2
    cache.admit(_hello(NOW), source=SOURCE, now_ms=NOW + MAX_CLOCK_SKEW_MS + 2)
    assert len(cache) == 1, "entries whose hello is now stale are forgotten"


def test_full_nonce_cache_refuses_its_only_source_rather_than_forget() -> None:
    cache = NonceCache(capacity=1)
    first, second = (
        verify_hello(build_hello(KEY, "net-1", "daemon", now_ms=NOW), now_ms=NOW) for _ in range(2)
    )
    cache.admit(first, source=SOURCE, now_ms=NOW)
    with pytest.raises(HelloRejected) as caught:
        cache.admit(second, source=SOURCE, now_ms=NOW)
    assert caught.value.reason == RejectReason.BROKER_BUSY
    with pytest.raises(HelloRejected, match="replayed_nonce"):
        cache.admit(first, source="192.0.2.2", now_ms=NOW + 1)


def test_a_source_filling_the_cache_loses_its_own_entries_not_others_their_hellos() -> None:
    cache = NonceCache(capacity=3)
    flood = [_hello(NOW + n) for n in range(3)]
    for hello in flood:
        cache.admit(hello, source=FLOOD, now_ms=NOW)
    fleet = _hello(NOW)
    cache.admit(fleet, source=FLEET, now_ms=NOW)  # takes the flood's entry that expires first
    with pytest.raises(HelloRejected) as caught:
        cache.admit(_hello(NOW), source=FLOOD, now_ms=NOW)
    assert caught.value.reason == RejectReason.BROKER_BUSY
    for replayed, source in [(fleet, OTHER), (flood[1], OTHER), (flood[2], FLEET)]:
        with pytest.raises(HelloRejected, match="replayed_nonce"):
            cache.admit(replayed, source=source, now_ms=NOW)
    assert (len(cache), cache.evicted) == (3, 1)
    cache.admit(_hello(NOW), source=OTHER, now_ms=NOW)  # the flood holds 2, more than OTHER's 0
    with pytest.raises(HelloRejected, match="broker_busy"):
        cache.admit(_hello(NOW), source=FLEET, now_ms=NOW)  # all hold 1: a tie is no room
    assert (len(cache), cache.evicted) == (3, 2)


def test_counts_follow_expiry_and_eviction_over_many_rounds() -> None:
    """Each round the flood fills the cache and a newcomer evicts from it; once the hellos are
    stale every source starts again from nothing."""
    cache = NonceCache(capacity=2)
    now = NOW
    for round_ in range(50):
        now += MAX_CLOCK_SKEW_MS + 1  # the previous round's hellos are stale
        cache.admit(_hello(now), source=FLOOD, now_ms=now)
        cache.admit(_hello(now), source=FLOOD, now_ms=now)
        newcomer = FLEET if round_ % 2 else OTHER
        cache.admit(_hello(now), source=newcomer, now_ms=now)
        with pytest.raises(HelloRejected, match="broker_busy"):
            cache.admit(_hello(now), source=newcomer, now_ms=now)
        assert len(cache) == 2
    assert cache.evicted == 50


def test_newcomers_take_turns_in_a_full_cache_and_their_entries_still_expire() -> None:
    cache = NonceCache(capacity=2)
    hellos = [_hello(NOW + n) for n in range(20)]
    for n, hello in enumerate(hellos):
        cache.admit(hello, source=f"192.0.2.{n}", now_ms=NOW)
    assert (len(cache), cache.evicted) == (2, 18)
    with pytest.raises(HelloRejected, match="replayed_nonce"):
        cache.admit(hellos[-1], source=OTHER, now_ms=NOW)
    later = NOW + 20 + MAX_CLOCK_SKEW_MS
    cache.admit(_hello(later), source=OTHER, now_ms=later)
    assert len(cache) == 1, "every earlier entry expired, evicted or not"


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unknown", "unknown"),
    ],
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64(host: str, source: str) -> None:
    assert source_of(host) == source
