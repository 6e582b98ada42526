"""`meshactors rpc` and `meshactors channel` against a real daemon process (own device only)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from meshactors.client import MeshClient, RequestContext, SyncClient
from tests.support import Home

pytestmark = pytest.mark.e2e

UPPER = "import sys, json; print(json.dumps(json.load(sys.stdin).upper()))"
BROKEN = "import sys; sys.stderr.write('cannot do that'); sys.exit(3)"


@pytest.fixture
def me(home: Home) -> Iterator[str]:
    """A running daemon in `home` joined to `lan` (whose broker never answers); its device id."""
    home.cli("daemon", "up", "--detach")
    home.cli("network", "add", "lan", "--broker", "ws://127.0.0.1:9/v1")
    with SyncClient.connect(home.socket) as client:
        yield client.call("status")["device_id"]


def started(process: subprocess.Popen[str], line_from: str) -> str:
    """Block until the background command prints a line (stdout or stderr); return it."""
    stream = process.stderr if line_from == "stderr" else process.stdout
    assert stream is not None
    return stream.readline()


async def test_rpc_serve_answers_rpc_call_with_its_commands_output(home: Home, me: str) -> None:
    server = home.popen("rpc", "serve", "lan", "upper", "--", sys.executable, "-c", UPPER)
    broken = home.popen("rpc", "serve", "lan", "broken", "--", sys.executable, "-c", BROKEN)
    try:
        with trio.fail_after(30):
            for process in (server, broken):
                line = await trio.to_thread.run_sync(started, process, "stderr")
                assert line.startswith("serving")
            answer = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", "lan", me, "upper", '"abc"')
            )
            assert json.loads(answer.stdout) == "ABC"
            failed = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", "lan", me, "broken", check=False)
            )
        assert failed.returncode == 1
        assert "remote_error" in failed.stderr and "cannot do that" in failed.stderr
    finally:
        for process in (server, broken):
            process.kill()
            process.wait()


async def test_rpc_call_stream_prints_each_chunk(home: Home, me: str) -> None:
    async def count(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        for n in range(payload):
            yield n

    async with MeshClient(home.socket) as client:
        await client.serve("lan", "count", count)
        with trio.fail_after(30):
            result = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", "lan", me, "count", "4", "--stream")
            )
    assert [json.loads(line) for line in result.stdout.splitlines()] == [0, 1, 2, 3]


async def test_channel_send_reaches_channel_sub(home: Home, me: str) -> None:
    home.cli("channel", "send", "lan", "news", "--to", me, "--retain", '{"n": 1}')
    reader = home.popen("channel", "sub", "lan", "news")
    try:
        with trio.fail_after(30):
            first = json.loads(await trio.to_thread.run_sync(started, reader, "stdout"))
            assert first == {"from": me, "channel": "news", "payload": {"n": 1}, "retained": True}
            sent = await trio.to_thread.run_sync(
                functools.partial(home.cli, "channel", "send", "lan", "news", "--to", me, "2")
            )
            assert json.loads(sent.stdout) == {"dispatched_to": [me]}
            second = json.loads(await trio.to_thread.run_sync(started, reader, "stdout"))
        assert second["payload"] == 2 and "retained" not in second
        everyone = home.cli("channel", "send", "lan", "news", "3")
        assert json.loads(everyone.stdout) == {"dispatched_to": []}
    finally:
        reader.kill()
        reader.wait()
