"""A `meshactors daemon up` whose open-file limit is below what MAX_CLIENTS needs raises its
soft limit to the hard one and lowers its client limit to what fits, so a client past it is
told `unavailable` rather than left unanswered (EMFILE); with an embedded broker the two share
the limit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.broker.limits import MAX_CONNECTIONS
from meshactors.control.supervisor import MAX_CLIENTS
from meshactors.network.manager import MAX_NETWORKS
from meshactors.open_files import OPEN_FILES_RESERVE
from tests.broker.test_open_files import health_of
from tests.support import Home, LineClient

pytestmark = pytest.mark.e2e

DAEMON_START_WAIT_S = 30  # bound for a daemon process to start and answer
FITTING_CLIENTS = 8  # what the hard limit below leaves room for, past the reserve and networks


async def daemon_with_limit(
    home: Home, soft: int, hard: int, *flags: str
) -> tuple[trio.Process, list[Any]]:
    """A `daemon up FLAGS` process in `home` under that open-file limit, and what it logged
    until it was ready."""
    command = [sys.executable, "-m", "meshactors", "daemon", "up", "--log-json", *flags]
    process = await trio.lowlevel.open_process(
        command,
        env=home.env,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert process.stderr is not None
    log = b""
    while True:
        lines = [line for line in log.splitlines(keepends=True) if line[-1:] == b"\n"]
        events = [json.loads(line) for line in lines]
        if any(event["event"] == "daemon ready" for event in events):
            return process, events
        chunk = await process.stderr.receive_some(4096)
        assert chunk, f"the daemon exited before it was ready: {log.decode()}"
        log += chunk


async def fill_then_refuse(home: Home, fitting: int) -> None:
    """`fitting` clients are served at once, and one more is told `unavailable`."""
    clients = []
    for _ in range(fitting):
        client = LineClient(await trio.open_unix_socket(str(home.socket)))
        assert (await client.call("status"))["ok"]
        clients.append(client)
    refused = LineClient(await trio.open_unix_socket(str(home.socket)))
    await refused.send_raw(b'{"id":1,"op":"status"}\n')
    frame = await refused.frame()
    assert frame["error"] == {
        "code": "unavailable",
        "message": f"at most {fitting} clients at once",
    }
    for client in [*clients, refused]:
        await client.aclose()


@pytest.mark.parametrize("soft_short_by", [0, 40], ids=["hard_limit", "raised_to_hard"])
async def test_a_daemon_short_of_open_files_refuses_clients_past_what_fits(
    tmp_path: Path, soft_short_by: int
) -> None:
    hard = OPEN_FILES_RESERVE + MAX_NETWORKS + FITTING_CLIENTS
    home = Home(tmp_path)
    with trio.fail_after(DAEMON_START_WAIT_S):
        process, events = await daemon_with_limit(home, hard - soft_short_by, hard)
        try:
            lowered = [event for event in events if event["event"] == "connection_limit_lowered"]
            assert [
                (e["limit"], e["configured"], e["effective"], e["open_files"]) for e in lowered
            ] == [("max_clients", MAX_CLIENTS, FITTING_CLIENTS, hard)]
            await fill_then_refuse(home, FITTING_CLIENTS)
        finally:
            process.kill()
            await process.wait()


async def test_a_daemon_and_its_embedded_broker_share_the_open_files(tmp_path: Path) -> None:
    """Each lowered to its share (here half, as both want 4,096), not each to the whole
    limit, which together would run out of files (EMFILE) under load."""
    hard = 2 * OPEN_FILES_RESERVE + MAX_NETWORKS + 2 * FITTING_CLIENTS
    home = Home(tmp_path)
    with trio.fail_after(DAEMON_START_WAIT_S):
        process, events = await daemon_with_limit(
            home, hard, hard, "--broker-listen", "127.0.0.1:0"
        )
        try:
            lowered = [event for event in events if event["event"] == "connection_limit_lowered"]
            assert [
                (e["limit"], e["configured"], e["effective"], e["open_files"]) for e in lowered
            ] == [
                ("max_clients", MAX_CLIENTS, FITTING_CLIENTS, hard),
                ("max_connections", MAX_CONNECTIONS, FITTING_CLIENTS, hard),
            ]
            (listen,) = [e["listen"] for e in events if e["event"] == "broker_listening"]
            health = await health_of(f"ws://{listen}/v1")
            assert health["max_connections"] == FITTING_CLIENTS
            await fill_then_refuse(home, FITTING_CLIENTS)
        finally:
            process.kill()
            await process.wait()
