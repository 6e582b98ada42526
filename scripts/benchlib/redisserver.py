"""A real redis-server on a free loopback port, for the broker cluster tests and benchmarks; it
can be stopped and started again on the same port (the outage tests)."""

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

START_S = 20.0  # bound for redis-server to accept connections
POLL_S = 0.02  # between two looks (bounded by START_S)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


@attrs.define
class RedisServer:
    """One redis-server process without persistence, in `directory`, on `port`."""

    directory: Path
    port: int = attrs.field(factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = redis_server_path()
        assert executable is not None
        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"redis-server did not start on {self.port}") from None
                time.sleep(POLL_S)

    def stop(self) -> None:
        """Kill it (SIGKILL: an outage, not a shutdown) and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=START_S)
        self.process = None


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A redis-server in `directory` (made if missing) until the block ends."""
    directory.mkdir(exist_ok=True)
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
