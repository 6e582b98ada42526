"""A `meshactors broker` process whose open-file limit is below what its connection limit
needs raises its soft limit to the hard one and lowers its connection limit to what fits, so a
connection past it is refused with the 503 rather than left unanswered (EMFILE)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from meshactors.open_files import OPEN_FILES_RESERVE
from tests.broker.support import connect
from tests.broker.test_health import answer_from, headers_and_body, health_request

pytestmark = pytest.mark.e2e

BROKER_START_WAIT_S = 30  # bound for a broker process to start and answer
FITTING_CONNECTIONS = 8  # what the hard limit below leaves room for, past the reserve


def open_files_limit(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn that sets the child's open-file limit before it runs the broker."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def broker_with_limit(soft: int, hard: int) -> tuple[trio.Process, str, list[Any]]:
    """A `broker --listen 127.0.0.1:0` process under that limit, its /v1 URL and what it
    logged until it listened."""
    command = [sys.executable, "-m", "meshactors", "broker", "--log-json"]
    command += ["--listen", "127.0.0.1:0"]
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, preexec_fn=open_files_limit(soft, hard)
    )
    assert process.stderr is not None
    log = b""
    while True:
        events = [json.loads(line) for line in log.splitlines(keepends=True) if line[-1:] == b"\n"]
        for event in events:
            if event["event"] == "broker_listening":
                return process, f"ws://{event['listen']}/v1", events
        chunk = await process.stderr.receive_some(4096)
        assert chunk, f"the broker exited before it listened: {log.decode()}"
        log += chunk


async def health_of(url: str) -> dict[str, Any]:
    status_line, rest = await answer_from(url, health_request("GET", "/health"))
    assert status_line == b"HTTP/1.1 200 OK"
    health: dict[str, Any] = json.loads(headers_and_body(rest)[1])
    return health


@pytest.mark.parametrize("soft_short_by", [0, 40], ids=["hard_limit", "raised_to_hard"])
async def test_a_broker_short_of_open_files_refuses_past_what_fits(soft_short_by: int) -> None:
    hard = OPEN_FILES_RESERVE + FITTING_CONNECTIONS
    with trio.fail_after(BROKER_START_WAIT_S):
        process, url, events = await broker_with_limit(hard - soft_short_by, hard)
        try:
            lowered = [event for event in events if event["event"] == "connection_limit_lowered"]
            assert [(e["configured"], e["effective"], e["open_files"]) for e in lowered] == [
                (4096, FITTING_CONNECTIONS, hard)
            ]
            port = int(url.split(":")[2].split("/")[0])
            holders = [
                await trio.open_tcp_stream("127.0.0.1", port) for _ in range(FITTING_CONNECTIONS)
            ]
            health = await health_of(url)
            while health["connections"] < FITTING_CONNECTIONS + 1:  # + the health request
                health = await health_of(url)
            assert health["max_connections"] == FITTING_CONNECTIONS
            with pytest.raises(ConnectionRejected) as refused:
                async with connect(url):
                    pass
            assert refused.value.status_code == 503
            for holder in holders:
                await holder.aclose()
        finally:
            process.kill()
            await process.wait()
