"""HTTP driven by real curl: over the Unix socket, server-sent events, and the TCP listener."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshactors.control.session import Session
from meshactors.daemon.services import Services
from meshactors.ops.optable import Op
from tests.control.httptools import CURL, needs_curl, sse_events
from tests.control.test_http import StandInSendParams
from tests.daemon_tree import serving
from tests.support import publish

pytestmark = needs_curl
BASE = "http://localhost"
CODE_AND_CONNECTS = "%{http_code} %{num_connects}\n"  # curl -w: status, new connections made


async def curl(*args: str) -> str:
    assert CURL is not None
    with trio.fail_after(20):
        result = await trio.run_process(
            [CURL, "-sS", *args], capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.fixture
async def tcp_daemon(tmp_path: Path) -> AsyncIterator[Services]:
    async with serving(tmp_path, tcp_port=0) as services:
        yield services


def sock(daemon: Services) -> list[str]:
    return ["--unix-socket", str(daemon.paths.socket)]


async def test_curl_get_routes(daemon: Services) -> None:
    out = await curl(*sock(daemon), f"{BASE}/v1/status")
    assert json.loads(out)["data"]["device_id"] == daemon.identity.device_id
    assert json.loads(await curl(*sock(daemon), f"{BASE}/v1/health"))["ok"] is True


async def test_curl_reuses_one_connection_for_two_requests(daemon: Services) -> None:
    discard = ["-o", "/dev/null"]
    urls = [*discard, f"{BASE}/v1/version", *discard, f"{BASE}/v1/health"]
    out = await curl(*sock(daemon), "-w", CODE_AND_CONNECTS, *urls)
    assert out.splitlines() == ["200 1", "200 0"]


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["-d", "{}", f"{BASE}/v1/inspect"], "200"),
        (["-d", "{bad", f"{BASE}/v1/inspect"], "400"),
        (["-d", "{}", f"{BASE}/v1/no_such_op"], "404"),
        ([f"{BASE}/nowhere"], "404"),
        (["-X", "DELETE", f"{BASE}/v1/status"], "405"),
        (["-X", "POST", f"{BASE}/v1/status"], "200"),  # no body at all: params {}
        (["-H", "Transfer-Encoding: chunked", "-d", "{}", f"{BASE}/v1/status"], "411"),
    ],
)
async def test_curl_status_codes(daemon: Services, args: list[str], status: str) -> None:
    out = await curl(*sock(daemon), "-o", "/dev/null", "-w", "%{http_code}", *args)
    assert out == status


async def test_curl_large_body_gets_100_continue(daemon: Services) -> None:
    body = json.dumps({"pad": "x" * 50_000})  # curl asks `Expect: 100-continue` for this
    out = await curl(
        *sock(daemon), "--expect100-timeout", "60", "-d", body, f"{BASE}/v1/status"
    )  # without the interim answer curl would wait a minute and fail_after would trip
    assert json.loads(out)["error"]["code"] == "invalid_params"


async def test_curl_send_with_idempotency_key(daemon: Services) -> None:
    seen: list[str | None] = []

    async def send(session: Session, params: StandInSendParams) -> dict[str, Any]:
        seen.append(params.client_message_id)
        return {"outcome": "duplicate" if len(seen) > 1 else "accepted"}

    daemon.ops.ops["send"] = Op("send", StandInSendParams, send, "stand-in", idempotency_key=True)
    args = ["-o", "/dev/null", "-w", "%{http_code}", "-H", "Idempotency-Key: k1", "-d"]
    assert await curl(*sock(daemon), *args, '{"to":"bob"}', f"{BASE}/v1/send") == "202"
    assert await curl(*sock(daemon), *args, '{"to":"bob"}', f"{BASE}/v1/send") == "200"
    assert seen == ["k1", "k1"]


async def read_curl_events(
    command: list[str], want: int, on_first: Any = None
) -> list[dict[str, Any]]:
    """Run `curl -N`, collect `want` events (calling `on_first` after the first), stop curl."""
    assert CURL is not None
    events: list[dict[str, Any]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            run = functools.partial(trio.run_process, stdout=subprocess.PIPE, check=False)
            process: trio.Process = await nursery.start(run, [CURL, "-sS", "-N", *command])
            assert process.stdout is not None
            buffer = b""
            while len(events) < want:
                chunk = await process.stdout.receive_some(65536)
                assert chunk, "curl ended early"
                buffer += chunk
                complete, _, buffer = buffer.rpartition(b"\n\n")
                if complete:
                    before = len(events)
                    events += sse_events(complete + b"\n\n")
                    if before == 0 and on_first is not None:
                        on_first()
            nursery.cancel_scope.cancel()
    return events


async def test_curl_sse_replays_after_last_event_id_then_streams_live(daemon: Services) -> None:
    logged = await publish(daemon.events, "tick", *({"n": n} for n in range(3)))
    events = await read_curl_events(
        [*sock(daemon), "-H", f"Last-Event-ID: {logged[0].event_id}", f"{BASE}/v1/events"],
        want=3,
        on_first=lambda: daemon.events.publish("tock", {"live": True}),
    )
    assert [e["id"] for e in events] == [str(logged[1].event_id), str(logged[2].event_id), "4"]
    assert events[2]["event"] == "tock"
    assert events[2]["data"]["live"] is True


async def test_curl_sse_over_tcp_with_the_token(tcp_daemon: Services) -> None:
    node = tcp_daemon.tree.find("daemon/control/tcp")
    assert node is not None and node.figures is not None
    token = tcp_daemon.paths.token_file.read_text().strip()
    (event,) = await publish(tcp_daemon.events, "tick", {})
    url = f"http://127.0.0.1:{node.figures()['port']}/v1/events"
    headers = ["-H", f"Authorization: Bearer {token}", "-H", "Last-Event-ID: 0"]
    events = await read_curl_events([*headers, url], want=1)
    assert events[0]["id"] == str(event.event_id)


async def test_curl_tcp_auth_failures(tcp_daemon: Services) -> None:
    node = tcp_daemon.tree.find("daemon/control/tcp")
    assert node is not None and node.figures is not None
    url = f"http://127.0.0.1:{node.figures()['port']}/v1/status"
    token = tcp_daemon.paths.token_file.read_text().strip()
    bearer = ["-H", f"Authorization: Bearer {token}"]
    cases = [
        ([url], "401"),
        (["-H", "Authorization: Bearer nope", url], "401"),
        ([*bearer, f"{url}?token={token}"], "400"),
        ([*bearer, f"{url}?access_token={token}"], "400"),
        ([*bearer, "-H", "Host: evil.example", url], "421"),
        ([*bearer, "-H", "Origin: http://evil.example", url], "403"),
        ([*bearer, url], "200"),
    ]
    for args, status in cases:
        assert await curl("-o", "/dev/null", "-w", "%{http_code}", *args) == status, args
    challenge = await curl("-o", "/dev/null", "-w", "%header{www-authenticate}", url)
    assert challenge.startswith("Bearer")
