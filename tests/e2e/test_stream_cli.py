"""`meshactors stream send|serve` against a real daemon process (own device only): a file goes
through byte-exact, a failing command and a method nobody serves end with their exit codes."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meshactors.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_USAGE
from meshactors.cli.served import MAX_STDERR_CHARS
from meshactors.client import BinaryStream, ClientError, MeshClient
from tests.support import Home, exited, kill_leftover, pid_written, sleeper

pytestmark = pytest.mark.e2e

DIGEST = "import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
BROKEN = "import sys; sys.stdin.buffer.read(); sys.stderr.write('no room'); sys.exit(4)"
LOUD_STDERR = "HEAD" + "x" * 5000 + "TAIL"  # more than an error message keeps
LOUD = f"import sys; sys.stdin.buffer.read(); sys.stderr.write({LOUD_STDERR!r}); sys.exit(3)"


def send(home: Home, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """`meshactors stream send ARGS…` with `data` on stdin, its output as bytes."""
    command = [sys.executable, "-m", "meshactors", "stream", "send", *args]
    return subprocess.run(command, env=home.env, input=data, capture_output=True, timeout=60)


def into_head(home: Home, *args: str) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """`meshactors ARGS… | head -c 100`, the command's stdin a pipe left open."""
    command = [sys.executable, "-m", "meshactors", *args]
    pipe = subprocess.PIPE
    sender = subprocess.Popen(command, env=home.env, stdin=pipe, stdout=pipe, stderr=pipe)
    head = subprocess.Popen(["head", "-c", "100"], stdin=sender.stdout, stdout=pipe)
    assert sender.stdout is not None
    sender.stdout.close()  # head alone reads it now
    return sender, head


def started(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    return process.stderr.readline()


async def test_stream_send_pipes_a_file_to_the_served_command(home: Home, me: str) -> None:
    data = hashlib.sha256(b"x").digest() * 100_000  # 3.2 MB
    server = home.popen("stream", "serve", "lan", "digest", "--", sys.executable, "-c", DIGEST)
    broken = home.popen("stream", "serve", "lan", "broken", "--", sys.executable, "-c", BROKEN)
    loud = home.popen("stream", "serve", "lan", "loud", "--", sys.executable, "-c", LOUD)
    try:
        with trio.fail_after(60):
            for process in (server, broken, loud):
                assert (await trio.to_thread.run_sync(started, process)).startswith("serving")
            done = await trio.to_thread.run_sync(
                functools.partial(send, home, "lan", me[:8], "digest", data=data)
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
            failed = await trio.to_thread.run_sync(
                functools.partial(send, home, "lan", me, "broken", "--json", data=b"abc")
            )
            assert failed.returncode == EXIT_FAILURE, (failed.stdout, failed.stderr)
            error = json.loads(failed.stdout)["error"]
            assert error["code"] == "remote_error"
            assert error["message"].endswith("exited 4: no room")
            long = await trio.to_thread.run_sync(
                functools.partial(send, home, "lan", me, "loud", "--json", data=b"abc")
            )
            message = json.loads(long.stdout)["error"]["message"]
            assert message == f"{sys.executable} exited 3: {LOUD_STDERR[-MAX_STDERR_CHARS:]}"
            nobody = await trio.to_thread.run_sync(
                functools.partial(send, home, "lan", me, "nobody", data=b"")
            )
            assert nobody.returncode == EXIT_NOT_FOUND
    finally:
        for process in (server, broken, loud):
            process.kill()
            process.wait()


async def test_stream_commands_take_the_network_as_an_option_or_the_only_joined_one(
    home: Home, me: str
) -> None:
    served = home.popen(
        "stream", "serve", "-n", "lan", "digest", "--", sys.executable, "-c", DIGEST
    )
    default = home.popen("stream", "serve", "other", "--", sys.executable, "-c", DIGEST)
    try:
        with trio.fail_after(60):
            for process, method in ((served, "digest"), (default, "other")):
                line = await trio.to_thread.run_sync(started, process)
                assert line == f"serving {method} on lan; Ctrl-C stops\n"
            for args in (("-n", "lan", me, "digest"), (me[:8], "other")):
                done = await trio.to_thread.run_sync(
                    functools.partial(send, home, *args, data=b"abc")
                )
                assert done.returncode == 0, done.stderr
                assert done.stdout.decode().strip() == hashlib.sha256(b"abc").hexdigest()
    finally:
        for process in (served, default):
            process.kill()
            process.wait()
    twice = send(home, "-n", "lan", "lan", me, "digest", data=b"")
    assert twice.returncode == EXIT_USAGE, twice.stderr


async def test_ctrl_c_on_stream_send_resets_the_stream_and_exits_interrupted(
    home: Home, me: str
) -> None:
    """Ctrl-C before the stream's end: the other end reads `cancelled`, and the sender says
    so and exits 130, not 0, since what it printed is not the whole answer."""
    reset: list[str] = []
    told = trio.Event()

    async def hold(stream: BinaryStream) -> None:
        await stream.send_all(b"ready\n")
        try:
            while await stream.receive_some():
                pass
        except ClientError as exc:
            reset.append(exc.code)
        told.set()

    async with MeshClient(home.socket) as client:
        await client.serve_stream("lan", "hold", hold)
        sender = home.popen("stream", "send", me, "hold", stdin=subprocess.PIPE)
        try:
            with trio.fail_after(30):
                assert sender.stdout is not None
                assert await trio.to_thread.run_sync(sender.stdout.readline) == "ready\n"
                sender.send_signal(signal.SIGINT)
                await told.wait()
                _, errors = await trio.to_thread.run_sync(sender.communicate)
        finally:
            sender.kill()
            sender.wait()
    assert reset == ["cancelled"]
    assert sender.returncode == EXIT_INTERRUPTED
    assert errors == "meshactors: interrupted: the stream was cancelled\n"


async def test_stream_send_into_a_reader_that_left_resets_the_stream_and_exits_0(
    home: Home, me: str
) -> None:
    """`stream send … | head -c 100`: once head has its bytes and leaves, the sender closes
    the stream unfinished (the other end reads `cancelled`) and ends quietly, exit 0."""
    reset: list[str] = []
    told = trio.Event()

    async def flood(stream: BinaryStream) -> None:
        async def read() -> None:
            try:
                while await stream.receive_some():
                    pass
            except ClientError as exc:
                reset.append(exc.code)
            told.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while not told.is_set():
                    await stream.send_all(b"x" * 65536)

    async with MeshClient(home.socket) as client:
        await client.serve_stream("lan", "flood", flood)
        sender, head = into_head(home, "stream", "send", me, "flood")
        assert sender.stderr is not None
        try:
            with trio.fail_after(60):
                await told.wait()
                code = await trio.to_thread.run_sync(sender.wait)
                out, _ = await trio.to_thread.run_sync(head.communicate)
        finally:
            for process in (sender, head):
                process.kill()
                process.wait()
        errors = sender.stderr.read()
        sender.stderr.close()
        assert sender.stdin is not None
        sender.stdin.close()
    assert (code, errors, len(out)) == (0, b"", 100)
    assert reset == ["cancelled"]


@pytest.mark.parametrize("stop", ["cancel", "sigterm", "sighup"])
async def test_a_stream_that_ends_early_kills_the_silent_command_and_its_children(
    home: Home, me: str, tmp_path: Path, stop: str
) -> None:
    """The command writes nothing and `sh -c` started a child: once the opener cancels the
    stream (after its end of data), or `stream serve` gets SIGTERM or SIGHUP (its terminal
    closed), neither keeps running."""
    fifo, pid = tmp_path / "sleeper.fifo", None
    server = home.popen("stream", "serve", "silent", "--", *sleeper(fifo))
    try:
        with trio.fail_after(60):
            assert (await trio.to_thread.run_sync(started, server)).startswith("serving")
            async with (
                MeshClient(home.socket) as client,
                await client.open_stream("lan", me, "silent") as stream,
            ):
                await stream.send_eof()
                pid = await pid_written(fifo)
                if stop != "cancel":
                    server.send_signal(signal.Signals[stop.upper()])
                    assert await trio.to_thread.run_sync(server.wait) == 0
            assert pid is not None  # closed unfinished: the serving end reads `cancelled`
            await exited(pid)
    finally:
        server.kill()
        server.wait()
        kill_leftover(pid)


async def test_a_stream_ends_when_its_command_exits_and_what_it_left_dies(
    home: Home, me: str, tmp_path: Path
) -> None:
    """`sh -c` exits at once, leaving `sleep` that holds its stderr (not its stdout): the
    stream ends cleanly all the same, and the `sleep` is killed as it ends."""
    fifo, pid = tmp_path / "pid.fifo", None
    os.mkfifo(fifo)
    left = ["sh", "-c", 'sleep 1000 >/dev/null & echo $! > "$0"', str(fifo)]
    server = home.popen("stream", "serve", "leaves", "--", *left)
    try:
        with trio.fail_after(60):
            assert (await trio.to_thread.run_sync(started, server)).startswith("serving")
            async with (
                MeshClient(home.socket) as client,
                await client.open_stream("lan", me, "leaves") as stream,
            ):
                await stream.send_eof()
                pid = await pid_written(fifo)
                assert await stream.receive_some() == b""
                await stream.finish()
            await exited(pid)
    finally:
        server.kill()
        server.wait()
        kill_leftover(pid)


async def test_a_stream_whose_connection_closes_unreset_kills_the_silent_command(
    home: Home, me: str, tmp_path: Path
) -> None:
    """The daemon dies under a stream: the serving end's connection closes with no reset
    frame, before the command's end was sent, and that ends the stream as broken: the silent
    command and its child are killed rather than left running."""
    fifo, pid = tmp_path / "sleeper.fifo", None
    server = home.popen("stream", "serve", "silent", "--", *sleeper(fifo))
    try:
        with trio.fail_after(60):
            assert (await trio.to_thread.run_sync(started, server)).startswith("serving")
            async with (
                MeshClient(home.socket) as client,
                await client.open_stream("lan", me, "silent") as stream,
            ):
                await stream.send_eof()
                pid = await pid_written(fifo)
                daemon = home.daemon_pid()
                assert daemon is not None
                os.kill(daemon, signal.SIGKILL)
                await exited(pid)
    finally:
        server.kill()
        server.wait()
        kill_leftover(pid)
