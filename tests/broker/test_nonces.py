"""The broker's replay memory: a hello's nonce is admitted once while the hello could pass."""

import pytest
from nacl.signing import SigningKey

from meshactors.broker.nonces import NonceCache
from meshactors.wire.broker import (
    MAX_CLOCK_SKEW_MS,
    HelloRejected,
    RejectReason,
    build_hello,
    verify_hello,
)

NOW = 1_700_000_000_000
KEY = SigningKey(bytes(range(32)))


def test_nonce_cache_refuses_a_replay_until_the_hello_would_be_stale() -> None:
    cache = NonceCache()
    hello = verify_hello(build_hello(KEY, "net-1", "daemon", now_ms=NOW), now_ms=NOW)
    cache.admit(hello, now_ms=NOW)
    with pytest.raises(HelloRejected) as caught:
        cache.admit(hello, now_ms=NOW + MAX_CLOCK_SKEW_MS)
    assert caught.value.reason == RejectReason.REPLAYED_NONCE
    assert caught.value.close_code == 4401
    cache.admit(verify_hello(build_hello(KEY, "n", "d", now_ms=NOW), now_ms=NOW), now_ms=NOW + 1)
    assert len(cache) == 2
    cache.admit(
        verify_hello(build_hello(KEY, "n", "d", now_ms=NOW), now_ms=NOW),
        now_ms=NOW + MAX_CLOCK_SKEW_MS + 2,
    )
    assert len(cache) == 1, "entries whose hello is now stale are forgotten"


def test_full_nonce_cache_refuses_rather_than_forgets() -> None:
    cache = NonceCache(capacity=1)
    first, second = (
        verify_hello(build_hello(KEY, "net-1", "daemon", now_ms=NOW), now_ms=NOW) for _ in range(2)
    )
    cache.admit(first, now_ms=NOW)
    with pytest.raises(HelloRejected) as caught:
        cache.admit(second, now_ms=NOW)
    assert caught.value.reason == RejectReason.BROKER_BUSY
    with pytest.raises(HelloRejected, match="replayed_nonce"):
        cache.admit(first, now_ms=NOW + 1)
