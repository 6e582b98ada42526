"""`meshactors rpc` and `meshactors channel` against a real daemon process (own device only)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio

from meshactors.cli.channel_cmd import LOST_DAEMON
from meshactors.cli.common import EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE
from meshactors.cli.served import MAX_OUTPUT_BYTES, serve_until_stopped
from meshactors.client import ClientError, MeshClient, RequestContext
from meshactors.network.payload import MAX_PAYLOAD_BYTES
from meshactors.paths import resolve_paths
from meshactors.wire.device_id import device_id_from_public_key
from tests.client.fakedaemon import fake_daemon
from tests.client.test_channels import forget_network
from tests.support import Home, LineClient, exited, kill_leftover, pid_written, sleeper

pytestmark = pytest.mark.e2e

UPPER = "import sys, json; print(json.dumps(json.load(sys.stdin).upper()))"
BROKEN = "import sys; sys.stderr.write('first\\ncannot do that'); sys.exit(3)"
# a handler whose error would clear the caller's terminal and retitle it, were it printed raw
CLEARS_SCREEN = "import sys; sys.stderr.write('\\x1b[2Jgone\\x1b]0;owned\\x07'); sys.exit(1)"


def started(process: subprocess.Popen[str], line_from: str) -> str:
    """Block until the background command prints a line (stdout or stderr); return it."""
    stream = process.stderr if line_from == "stderr" else process.stdout
    assert stream is not None
    return stream.readline()


async def test_rpc_serve_answers_rpc_call_with_its_commands_output(home: Home, me: str) -> None:
    server = home.popen("rpc", "serve", "-n", "lan", "upper", "--", sys.executable, "-c", UPPER)
    broken = home.popen("rpc", "serve", "broken", "--", sys.executable, "-c", BROKEN)
    try:
        with trio.fail_after(30):
            for process in (server, broken):
                line = await trio.to_thread.run_sync(started, process, "stderr")
                assert line.startswith("serving")
            answer = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", me[:8], "upper", '"abc"')
            )
            assert json.loads(answer.stdout) == "ABC"
            failed = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", me, "broken", "--json", check=False)
            )
        assert failed.returncode == 1
        error = json.loads(failed.stdout)["error"]
        assert error["code"] == "remote_error"
        assert error["message"].endswith("exited 3: first\ncannot do that")
    finally:
        for process in (server, broken):
            process.kill()
            process.wait()
    _, served_errors = broken.communicate()
    said = error["message"].replace("\n", " | ")
    assert served_errors.splitlines() == [f"meshactors: broken on lan failed: {said}"]


async def test_a_remote_error_reaches_the_terminal_escaped_and_json_as_it_is(
    home: Home, me: str
) -> None:
    server = home.popen("rpc", "serve", "evil", "--", sys.executable, "-c", CLEARS_SCREEN)
    try:
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(started, server, "stderr")
            assert line.startswith("serving")
            text = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", me, "evil", check=False)
            )
            as_json = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", me, "evil", "--json", check=False)
            )
    finally:
        server.kill()
        server.wait()
    _, served_errors = server.communicate()
    assert text.returncode == as_json.returncode == 1
    (said,) = text.stderr.splitlines()
    assert said.startswith("meshactors: remote_error: ")
    assert said.endswith("exited 1: \\x1b[2Jgone\\x1b]0;owned\\x07"), said
    assert json.loads(as_json.stdout)["error"]["message"].endswith("\x1b[2Jgone\x1b]0;owned\x07")
    assert "\x1b" not in served_errors and "\\x1b[2Jgone" in served_errors, served_errors


@pytest.mark.parametrize("kind", ["rpc", "stream"])
async def test_a_serve_whose_method_another_program_claims_stops_exit_7(
    home: Home, me: str, kind: str
) -> None:
    """Last claim wins: the serve, no longer serving, says so and exits instead of staying up."""
    server = home.popen(kind, "serve", "-n", "lan", "upper", "--", "cat")

    async def other(payload: Any, ctx: RequestContext) -> Any:
        return payload

    try:
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(started, server, "stderr")
            assert line.startswith("serving upper on lan")
            async with MeshClient(home.socket) as client:
                await client.serve("lan", "upper", other)
                await exited(server.pid)
    finally:
        server.kill()
        _, errors = server.communicate()
    assert server.returncode == EXIT_REFUSED
    said = "upper on lan was claimed by another program; stopping"
    assert errors.splitlines() == [f"meshactors: {said}"]


async def test_rpc_call_in_the_old_positional_form_still_answers(home: Home, me: str) -> None:
    server = home.popen("rpc", "serve", "lan", "upper", "--", sys.executable, "-c", UPPER)
    try:
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(started, server, "stderr")
            assert "`rpc serve NET METHOD -- CMD` is deprecated" in line
            assert (await trio.to_thread.run_sync(started, server, "stderr")).startswith("serving")
            answer = await trio.to_thread.run_sync(
                functools.partial(home.cli, "rpc", "call", "lan", me, "upper", '"x"')
            )
        assert json.loads(answer.stdout) == "X"
        assert "`rpc call NET PEER METHOD [PAYLOAD]` is deprecated" in answer.stderr
    finally:
        server.kill()
        server.wait()


async def event_of(client: LineClient, kind: str) -> dict[str, Any]:
    """The next event of `kind` on `client` (answers and other events are skipped)."""
    while True:
        frame = await client.frame()
        if frame.get("kind") == kind:
            return frame


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_ctrl_c_on_rpc_call_cancels_the_call_and_exits_interrupted(
    home: Home, me: str, stream: bool
) -> None:
    server = LineClient(await trio.open_unix_socket(str(home.socket)))
    claim = await server.call("rpc_register", network="lan", method="slow", streaming=stream)
    assert claim["ok"], claim
    caller = home.popen("rpc", "call", me, "slow", "1", *(["--stream"] if stream else []))
    try:
        with trio.fail_after(30):
            inbound = await event_of(server, "rpc_inbound")
            if stream:  # the caller is in its loop of chunks once it has printed the first
                request_id = inbound["request_id"]
                await server.send("rpc_stream_chunk", request_id=request_id, payload="first")
                assert json.loads(await trio.to_thread.run_sync(started, caller, "stdout")) == (
                    "first"
                )
            caller.send_signal(signal.SIGINT)
            cancelled = await event_of(server, "rpc_cancelled")
            _, errors = await trio.to_thread.run_sync(caller.communicate)
    finally:
        caller.kill()
        caller.wait()
        await server.aclose()
    assert cancelled["request_id"] == inbound["request_id"]
    assert cancelled["reason"] == "cancelled"
    assert caller.returncode == EXIT_INTERRUPTED  # no answer: the caller gave up
    assert errors == "meshactors: interrupted: the call was cancelled\n"


async def test_a_second_ctrl_c_while_rpc_call_cancels_exits_interrupted_quietly(
    home: Home,
) -> None:
    """A daemon slow to answer the cancel (a stand-in that never does): a second Ctrl-C while
    `rpc call --stream` waits for it ends the wait as the first did, exit 130 and one line, no
    traceback; closing the connection cancels the call all the same."""
    peer = device_id_from_public_key(bytes(nacl.signing.SigningKey(b"p" * 32).verify_key))
    async with fake_daemon(home.socket) as daemon:
        daemon.never_answered.add("rpc_cancel")
        caller = home.popen("rpc", "call", "-n", "lan", peer, "slow", "--stream")
        try:
            with trio.fail_after(30):
                session = await daemon.next_session()
                await session.wait_op("rpc_call_stream")
                chunk = {"kind": "rpc_call_stream_chunk", "request_id": "s1", "payload": 1}
                await session.send(chunk)
                assert await trio.to_thread.run_sync(started, caller, "stdout") == "1\n"
                caller.send_signal(signal.SIGINT)
                await session.wait_op("rpc_cancel")  # the caller waits for its answer now
                caller.send_signal(signal.SIGINT)
                _, errors = await trio.to_thread.run_sync(caller.communicate)
        finally:
            caller.kill()
            caller.wait()
    assert errors == "meshactors: interrupted: the call was cancelled\n"
    assert caller.returncode == EXIT_INTERRUPTED


def test_rpc_serve_refuses_a_command_that_cannot_be_run(home: Home, me: str) -> None:
    refused = home.cli("rpc", "serve", "m", "--", "/no/such/binary", check=False)
    assert refused.returncode == EXIT_NOT_FOUND
    assert refused.stderr.splitlines() == [
        "meshactors: cannot run '/no/such/binary': not found or not executable"
    ]


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


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """What `stream` carries until its end."""
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_rpc_call_stream_whose_output_is_not_read_fails_lagged(home: Home, me: str) -> None:
    """A caller whose stdout nobody reads stops reading its connection, so the daemon skips
    the stream's next chunk and ends the call (`lagged`): `rpc call --stream` prints what came
    before the hole, then fails at the lag notice that marks it."""

    async def endless(payload: Any, ctx: RequestContext) -> AsyncIterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    async with MeshClient(home.socket) as server:
        await server.serve("lan", "endless", endless)
        with server.events() as told:
            command = ["rpc", "call", "--timeout", "600", me, "endless", "--stream"]
            caller = await trio.lowlevel.open_process(
                [sys.executable, "-m", "meshactors", *command],
                env=home.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert caller.stdout is not None and caller.stderr is not None
            try:
                with trio.fail_after(120):
                    # nothing reads the caller's stdout yet: the chunks pile up until the
                    # daemon has no room left for the next one and ends the call
                    async for event in told:
                        if event["kind"] == "rpc_cancelled":
                            break
                    assert event["reason"] == "lagged"
                    printed = await _read_all(caller.stdout)
                    errors = await _read_all(caller.stderr)
                    await caller.wait()
            finally:
                caller.kill()
                await caller.wait()
    chunks = [json.loads(line) for line in printed.splitlines()]
    assert chunks == list(range(len(chunks)))  # those before the hole, none after it
    # skipped: the chunk that found no room; the end it made is never skipped
    assert errors.decode().splitlines() == [
        "meshactors: stream failed: lagged: the daemon skipped 1 events of this connection"
    ]
    assert caller.returncode == 1


async def test_channel_send_reaches_channel_sub(home: Home, me: str) -> None:
    home.cli("channel", "send", "lan", "news", "--to", me, "--retain", '{"n": 1}')
    reader = home.popen("channel", "subscribe", "news")
    try:
        with trio.fail_after(30):
            first = json.loads(await trio.to_thread.run_sync(started, reader, "stdout"))
            assert first == {"from": me, "channel": "news", "payload": {"n": 1}, "retained": True}
            sent = await trio.to_thread.run_sync(
                functools.partial(home.cli, "channel", "send", "news", "--to", me[:10], "2")
            )
            assert json.loads(sent.stdout) == {"dispatched_to": [me]}
            second = json.loads(await trio.to_thread.run_sync(started, reader, "stdout"))
        assert second["payload"] == 2 and "retained" not in second
        everyone = home.cli("channel", "send", "lan", "news", "3")
        assert json.loads(everyone.stdout) == {"dispatched_to": []}
    finally:
        reader.kill()
        reader.wait()


async def test_channel_sub_exits_6_once_its_network_is_removed(home: Home, me: str) -> None:
    """The daemon ends the subscription with its network: the reader says so and exits rather
    than wait for ever for messages that can no longer come."""
    home.cli("channel", "send", "lan", "news", "--to", me, "--retain", "1")
    reader = home.popen("channel", "subscribe", "news")
    try:
        with trio.fail_after(30):
            await trio.to_thread.run_sync(started, reader, "stdout")  # subscribed
            await trio.to_thread.run_sync(functools.partial(home.cli, "network", "remove", "lan"))
            await exited(reader.pid)
    finally:
        reader.kill()
        _, errors = reader.communicate()
    assert reader.returncode == EXIT_NOT_FOUND
    said = "news on lan ended (network_removed); subscribing again failed: no_such_network: "
    assert errors.splitlines() == [f"meshactors: {said}not joined to a network 'lan'"]


async def test_channel_sub_outlives_a_daemon_restart_and_exits_6_if_its_network_went(
    home: Home, me: str
) -> None:
    """The command rides the client library: a daemon restart is a gap it says on stderr, not
    its end, and a network removed while the daemon was down ends it as a removal would."""
    home.cli("channel", "send", "lan", "news", "--to", me, "--retain", "1")
    reader = home.popen("channel", "subscribe", "news")
    try:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(started, reader, "stdout")  # subscribed
            await trio.to_thread.run_sync(functools.partial(home.cli, "daemon", "down"))
            state_db = resolve_paths({"MESHACTORS_HOME": str(home.path)}).state_db
            await trio.to_thread.run_sync(forget_network, state_db, "lan")
            await trio.to_thread.run_sync(functools.partial(home.cli, "daemon", "up", "--detach"))
            await exited(reader.pid)
    finally:
        reader.kill()
        _, errors = reader.communicate()
    assert reader.returncode == EXIT_NOT_FOUND
    said = "news on lan ended (network_removed); subscribing again failed: no_such_network: "
    lost = f"meshactors: {LOST_DAEMON}"
    assert errors.splitlines() == [lost, f"meshactors: {said}not joined to a network 'lan'"]


CHUNKS = """
import json, sys
n = json.load(sys.stdin)
print(json.dumps({"first": n}), flush=True)
open(sys.argv[1]).read()  # a FIFO: the rest comes once the caller has seen the first chunk
print("plain text")
print(json.dumps([n, n]))
sys.stderr.write("halfway there")
sys.exit(int(sys.argv[2]))
"""


async def test_rpc_serve_stream_answers_each_line_as_it_is_written(
    home: Home, me: str, tmp_path: Path
) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    args = ("--", sys.executable, "-c", CHUNKS, str(fifo))
    good = home.popen("rpc", "serve", "--stream", "good", *args, "0")
    bad = home.popen("rpc", "serve", "--stream", "bad", *args, "4")
    try:
        with trio.fail_after(30):
            for server in (good, bad):
                assert (await trio.to_thread.run_sync(started, server, "stderr")).startswith(
                    "serving"
                )
            for method, status in (("good", 0), ("bad", 1)):
                caller = home.popen("rpc", "call", me, method, "7", "--stream", "--json")
                first = await trio.to_thread.run_sync(started, caller, "stdout")
                assert json.loads(first) == {"first": 7}  # while the command still runs
                await trio.to_thread.run_sync(fifo.write_text, "go")
                rest, _ = await trio.to_thread.run_sync(caller.communicate)
                assert caller.returncode == status
                lines = rest.splitlines()
                assert [json.loads(line) for line in lines[:2]] == ["plain text", [7, 7]]
                if status:
                    error = json.loads(lines[2])["error"]
                    assert error["code"] == "remote_error"
                    assert error["message"].endswith("exited 4: halfway there")
    finally:
        for server in (good, bad):
            server.kill()
            server.wait()


async def test_channel_send_reliable_answers_once_acknowledged(home: Home, me: str) -> None:
    home.cli("channel", "send", "news", "--to", me, "--retain", '"first"')
    reader = home.popen("channel", "subscribe", "news")
    try:
        with trio.fail_after(30):
            retained = await trio.to_thread.run_sync(started, reader, "stdout")
            assert json.loads(retained)["payload"] == "first"  # so the reader is subscribed
            sent = await trio.to_thread.run_sync(
                home.cli, "channel", "send", "news", "--to", me, "--reliable", '"sure"'
            )
            assert json.loads(sent.stdout) == {"acknowledged": True, "subscribers": 1}
            line = await trio.to_thread.run_sync(started, reader, "stdout")
        assert json.loads(line)["payload"] == "sure"
    finally:
        reader.kill()
        reader.wait()
    refused = home.cli("channel", "send", "news", "--reliable", '"x"', check=False)
    assert refused.returncode == EXIT_USAGE
    assert "give --to PEER" in refused.stderr
    misplaced = home.cli("rpc", "serve", "m", "--stream", "--", "cat", check=False)
    assert misplaced.returncode == EXIT_USAGE
    assert "options go before METHOD" in misplaced.stderr


HUGE = "print(12345678901234567890123)"  # JSON, but beyond 64 bits: no payload carries it
LONG_LINE = f"print('first'); print('x' * {MAX_PAYLOAD_BYTES + 1}); print('never')"
FLOOD_BYTES = f"{2 * MAX_OUTPUT_BYTES}"  # a command's output: more than rpc serve keeps


async def test_rpc_serve_answers_remote_error_when_the_output_is_refused(
    home: Home, me: str
) -> None:
    huge = home.popen("rpc", "serve", "huge", "--", sys.executable, "-c", HUGE)
    long = home.popen("rpc", "serve", "--stream", "long", "--", sys.executable, "-c", LONG_LINE)
    flood = home.popen("rpc", "serve", "flood", "--", "head", "-c", FLOOD_BYTES, "/dev/zero")
    servers = (huge, long, flood)
    try:
        with trio.fail_after(30):  # well within the calls' own 60 s
            for server in servers:
                line = await trio.to_thread.run_sync(started, server, "stderr")
                assert line.startswith("serving")
            call = functools.partial(home.cli, "rpc", "call", "--timeout", "60", check=False)
            refused = await trio.to_thread.run_sync(call, me, "huge", "--json")
            streamed = await trio.to_thread.run_sync(call, me, "long", "--stream", "--json")
            flooded = await trio.to_thread.run_sync(call, me, "flood", "--json")
            warned = await trio.to_thread.run_sync(started, huge, "stderr")
    finally:
        for server in servers:
            server.kill()
            server.wait()
    assert refused.returncode == 1
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "remote_error"
    assert error["message"].startswith("handler result refused: invalid_params: ")
    assert warned.startswith("meshactors: huge on lan: its answer was refused: invalid_params")
    assert streamed.returncode == 1
    first, end = streamed.stdout.splitlines()
    assert json.loads(first) == "first"
    error = json.loads(end)["error"]
    assert error["code"] == "remote_error"
    assert error["message"].endswith(f"wrote a line over {MAX_PAYLOAD_BYTES} bytes")
    assert flooded.returncode == 1
    error = json.loads(flooded.stdout)["error"]
    assert error["code"] == "remote_error"
    assert error["message"] == f"head wrote more than {MAX_OUTPUT_BYTES} bytes and was killed"


@pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["sigterm", "sigint", "sighup"]
)
async def test_stopping_rpc_serve_kills_the_running_command_and_its_children(
    home: Home, me: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """`kill` (SIGTERM) and a closed terminal (SIGHUP) stop `rpc serve` as Ctrl-C does, and
    each signal sent to the serve alone kills the command it runs with what that started
    (`sh -c`'s `sleep`): the command, in a session of its own, gets no hangup itself."""
    fifo, pid = tmp_path / "sleeper.fifo", None
    server = home.popen("rpc", "serve", "slow", "--", *sleeper(fifo))
    try:
        with trio.fail_after(60):
            assert (await trio.to_thread.run_sync(started, server, "stderr")).startswith("serving")
            caller = home.popen("rpc", "call", me, "slow", "--json")
            try:
                pid = await pid_written(fifo)
                server.send_signal(stop)
                assert await trio.to_thread.run_sync(server.wait) == 0
                await exited(pid)
                answer, _ = await trio.to_thread.run_sync(caller.communicate)
            finally:
                caller.kill()
                caller.wait()
    finally:
        server.kill()
        server.wait()
        kill_leftover(pid)
    assert json.loads(answer)["error"]["code"] == "handler_gone"


async def test_ctrl_c_landing_in_a_handler_task_stops_the_serve_as_any_stop(
    home: Home, me: str
) -> None:
    """Ctrl-C that lands while a handler's task (not the serve's own) runs its code stops the
    serve as SIGTERM does; raised there as KeyboardInterrupt, it ended the serve in a traceback
    and exit 1 (seen on a loaded machine, as the serve started a call's command)."""
    claimed = trio.Event()

    async def interrupted(payload: Any, ctx: RequestContext) -> Any:
        signal.raise_signal(signal.SIGINT)  # delivered in this task, at its next bytecode
        await trio.sleep_forever()

    async def claim(client: MeshClient) -> None:
        await client.serve("lan", "slow", interrupted)
        claimed.set()

    async with MeshClient(home.socket) as caller, trio.open_nursery() as nursery:
        nursery.start_soon(serve_until_stopped, home.socket, "lan", "slow", claim)
        with trio.fail_after(60):
            await claimed.wait()
            with pytest.raises(ClientError) as gone:
                await caller.rpc_call("lan", me, "slow")
    assert gone.value.code == "handler_gone"
