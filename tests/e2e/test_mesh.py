"""Real processes from the CLI: a broker and two daemons join, approve each other, and are
active again by themselves after the broker is killed and restarted on the same port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.support import Home

pytestmark = pytest.mark.e2e

T = TypeVar("T")

DEADLINE = 30.0  # seconds any awaited condition may take
POLL = 0.1  # seconds between two looks at a condition (bounded by DEADLINE)
NET = "e2e"


def eventually(check: Callable[[], T | None], what: str, seconds: float = DEADLINE) -> T:
    """Poll `check` until it returns a value, at most `seconds` (DEADLINE by default)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def accepting(port: int) -> bool | None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return None
    return True


def start_broker(home: Home, port: int) -> subprocess.Popen[str]:
    broker = home.popen("broker", "--listen", f"127.0.0.1:{port}", "--log-json")
    eventually(lambda: accepting(port), f"the broker on port {port}")
    return broker


def cli_json(home: Home, *args: str) -> Any:
    return json.loads(home.cli(*args, "--json").stdout)


def status_of(home: Home, device_id: str) -> str | None:
    peers = cli_json(home, "peers", "--all")
    return next((p["status"] for p in peers if p["device_id"] == device_id), None)


def when_status(home: Home, device_id: str, status: str) -> Callable[[], bool | None]:
    return lambda: True if status_of(home, device_id) == status else None


def phase(home: Home) -> str:
    (network,) = cli_json(home, "network", "list")
    return str(network["phase"])


def join_approved(homes: tuple[Home, Home], broker_url: str) -> dict[str, str]:
    """Start daemons a and b, join both to NET through `broker_url`, approve each other both
    ways and wait until each sees the other active; returns their device ids by name."""
    a, b = homes
    ids = {}
    for name, home in (("a", a), ("b", b)):
        home.cli("identity", "set-label", name)
        home.cli("daemon", "up", "--detach")
        assert "joined e2e" in home.cli("network", "add", NET, "--broker", broker_url).stdout
        ids[name] = cli_json(home, "daemon", "status")["device_id"]
    eventually(when_status(a, ids["b"], "pending"), "a to see b pending")
    eventually(when_status(b, ids["a"], "pending"), "b to see a pending")
    a.cli("roster", "approve", ids["b"], "--label", "b")
    b.cli("roster", "approve", ids["a"], "--label", "a")
    eventually(when_status(a, ids["b"], "active"), "a to see b active")
    eventually(when_status(b, ids["a"], "active"), "b to see a active")
    return ids


@pytest.fixture
def brokers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for broker in started:
        if broker.poll() is None:
            broker.kill()
        broker.communicate(timeout=DEADLINE)


def test_two_daemons_stay_active_through_a_broker_restart(
    homes: tuple[Home, Home], brokers: list[subprocess.Popen[str]]
) -> None:
    a, b = homes
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1"
    brokers.append(start_broker(a, port))
    ids = join_approved(homes, url)
    assert phase(a) == "active"
    header, row = a.cli("peers").stdout.splitlines()
    assert header.split() == ["DEVICE", "LABEL", "STATUS", "ROLE", "RTT", "NAME", "TAGS"]
    assert row.split()[:3] == [ids["b"][:12], "b", "active"]
    header, row = a.cli("roster", "list").stdout.splitlines()
    assert (header.split(), row.split()) == (
        ["DEVICE", "LABEL", "STATE", "STATUS"],
        [ids["b"], "b", "approved", "active"],
    )

    brokers[0].send_signal(signal.SIGKILL)
    brokers[0].wait(timeout=DEADLINE)
    eventually(lambda: True if phase(a) == "degraded" else None, "a to notice the broker died")
    brokers.append(start_broker(b, port))

    eventually(when_status(a, ids["b"], "active"), "a to see b active again")
    eventually(when_status(b, ids["a"], "active"), "b to see a active again")
    tree = cli_json(a, "inspect")
    (network,) = next(c for c in tree["children"] if c["name"] == "networks")["children"]
    children = {child["name"]: child["figures"] for child in network["children"]}
    assert children["link"]["state"] == "up"
    assert children["link"]["connects"] == 2
    assert children["core"]["peers"]["active"] == 1
    readable = a.cli("inspect").stdout
    assert "network e2e" in readable and "link" in readable and "core" in readable
