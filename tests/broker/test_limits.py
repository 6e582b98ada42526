"""Token bucket arithmetic and BrokerConfig validation."""

import pytest

from meshactors.broker.limits import BrokerConfig, TokenBucket


def test_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(10.25) is False, "half a token has refilled"
    assert bucket.take(10.5) is True
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False], "capped at burst"


def test_delay_says_when_the_next_token_comes_and_spending_may_borrow() -> None:
    bucket = TokenBucket(rate=4.0, burst=1)
    assert bucket.delay(10.0) == 0.0
    bucket.spend(10.0)
    assert bucket.delay(10.0) == pytest.approx(0.25)
    assert bucket.delay(10.1) == pytest.approx(0.15)
    bucket.spend(10.1)  # a hair early: the debt pushes the next token further out
    assert bucket.delay(10.1) == pytest.approx(0.40)
    assert not bucket.take(10.45)
    assert bucket.take(10.5)


def test_config_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        BrokerConfig(max_peers=0)
    with pytest.raises(ValueError):
        BrokerConfig(ping_interval=0)
    with pytest.raises(ValueError, match=r"max_message_bytes must be at most 1024 \(the outbound"):
        BrokerConfig(max_message_bytes=2048, outbound_queue_bytes=1024)
    with pytest.raises(ValueError, match="pong_ceiling"):
        BrokerConfig(pong_timeout=30, pong_ceiling=20)


def test_config_defaults_match_the_protocol() -> None:
    config = BrokerConfig()
    assert config.max_message_bytes == 1 << 20
    assert (config.message_rate, config.message_burst) == (2000.0, 4000)
    assert (config.outbound_queue_messages, config.outbound_queue_bytes) == (4096, 8 << 20)
    assert config.max_peers == 256
    assert (config.ping_interval, config.pong_timeout, config.pong_ceiling) == (20.0, 20.0, 60.0)
