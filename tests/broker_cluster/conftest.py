"""Fixtures for the cluster tests: a real redis-server on a free port."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker_cluster.redis import RedisServer, redis_server_path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server (skipped where the redis-server package is not installed)."""
    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
