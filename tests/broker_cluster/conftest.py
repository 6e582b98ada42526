"""Fixtures for the cluster tests: a real redis-server on a free port."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.benchlib.redisserver import RedisServer, redis_server_path, running_redis


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server (skipped where the redis-server package is not installed)."""
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    with running_redis(tmp_path / "redis") as server:
        yield server
