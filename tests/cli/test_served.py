"""What a served command writes answers as JSON when it parses, else as the text it is; a
command whose call is cancelled dies with everything it started, and what a command left
running when it exited dies as its call ends."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing

from meshactors.cli.common import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE, CommandFailed
from meshactors.cli.served import (
    KILL_WAIT_SECONDS,
    MAX_OUTPUT_BYTES,
    MAX_STDERR_CHARS,
    PIPES_CLOSE_GRACE,
    STDERR_TAIL_BYTES,
    ServedCommandFailed,
    claim_lost,
    command_failed,
    kill_group,
    open_command,
    read_output,
    run_command,
    served_command,
    stream_command,
)
from meshactors.cli.stream_cmd import run_piped
from meshactors.client import BinaryStream, EventStream, MeshClient, StreamError
from meshactors.network.payload import MAX_PAYLOAD_BYTES
from meshactors.wire.pipe_frames import FrameParser, Reset, encode
from tests.daemon_tree import serving
from tests.support import exited, kill_leftover, pid_written, pids_written, sleeper

DEEP = "[" * 5000  # deeper than the parser goes: RecursionError, not ValueError
WRITE_DEEP = [sys.executable, "-c", f"print({DEEP!r})"]
TIMEOUT = 60.0  # seconds the command may take: a bound, not a pause
OVER_THE_OUTPUT_CAP = f"{2 * MAX_OUTPUT_BYTES}"  # bytes a command writes: more than it may


async def test_output_nested_too_deeply_answers_as_its_text() -> None:
    async with trio.open_nursery() as readers:
        assert await run_command(WRITE_DEEP, None, TIMEOUT, readers) == DEEP + "\n"


async def test_a_streamed_line_nested_too_deeply_answers_as_its_text() -> None:
    async with trio.open_nursery() as readers:
        lines = [line async for line in stream_command(WRITE_DEEP, None, TIMEOUT, readers)]
    assert [line.strip() for line in lines] == [DEEP]


async def _told(*events: dict[str, object]) -> AsyncIterator[dict[str, object]]:
    for event in events:
        yield event


async def test_a_serve_goes_on_past_a_claim_again_that_failed_for_a_reason_that_may_pass() -> None:
    """The client keeps a claim whose restore failed `unavailable` and tries again: only a loss
    for good (here another program's claim) ends the serve."""
    told = _told(
        {"kind": "client_replay_failed", "network": "n", "method": "m", "code": "unavailable"},
        {"kind": "client_replay_failed", "network": "n", "method": "m", "code": "deadline"},
        {"kind": "handler_displaced", "network": "n", "method": "m", "by": "c9"},
    )
    lost = await claim_lost(cast(EventStream, told), "n", "m")
    assert lost is not None
    assert (lost.error_code, lost.code) == ("conflict", EXIT_REFUSED)


async def test_a_serve_ends_on_a_claim_again_refused_for_sure() -> None:
    told = _told(
        {"kind": "client_replay_failed", "network": "n", "method": "m", "code": "no_such_network"}
    )
    lost = await claim_lost(cast(EventStream, told), "n", "m")
    assert lost is not None
    assert (lost.error_code, lost.code) == ("no_such_network", EXIT_NOT_FOUND)


def test_a_failed_command_s_non_ascii_stderr_reaches_the_opener_with_its_last_line() -> None:
    """Escaped, 2,000 Cyrillic characters are over the error frame: its middle gives way."""
    stderr = "".join(f"ошибка {n}: файл не найден\n" for n in range(100)).encode()
    message = str(command_failed(["sh"], 1, stderr))
    (got,) = FrameParser().feed(b"".join(encode(Reset("remote_error", message))))
    assert isinstance(got, Reset) and got.code == "remote_error"
    assert got.message.startswith("sh exited 1: ") and "…" in got.message
    assert got.message.endswith("ошибка 99: файл не найден")


@pytest.mark.parametrize("serve", ["rpc serve", "stream serve"])
def test_both_serves_split_the_command_after_dashes_alike(serve: str) -> None:
    assert served_command(serve, "m", ["--", "cat", "-n"]) == (["m"], ["cat", "-n"])
    assert served_command(serve, "net", ["m", "--", "cat"]) == (["net", "m"], ["cat"])
    with pytest.raises(CommandFailed) as misplaced:
        served_command(serve, "m", ["--stream", "--", "cat"])
    assert misplaced.value.code == EXIT_USAGE
    assert misplaced.value.message.startswith(f"options go before METHOD: {serve} --stream")
    with pytest.raises(CommandFailed) as missing:
        served_command(serve, "m", ["--"])
    assert missing.value.code == EXIT_USAGE
    with pytest.raises(CommandFailed) as absent:
        served_command(serve, "m", ["--", "/no/such/binary"])
    assert absent.value.code == EXIT_NOT_FOUND


async def run(command: list[str], streamed: bool) -> list[Any]:
    """Run `command` as `rpc serve` does, its output answering whole or line by line (its
    stderr read by a task of a nursery of its own, as `rpc serve` reads it)."""
    async with trio.open_nursery() as readers:
        if not streamed:
            return [await run_command(command, None, TIMEOUT, readers)]
        async with contextlib.aclosing(stream_command(command, None, TIMEOUT, readers)) as lines:
            return [line async for line in lines]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_a_cancelled_command_is_killed_with_what_it_started(
    tmp_path: Path, streamed: bool
) -> None:
    """`sh -c` starts `sleep`: cancelling the call kills both, not the shell alone."""
    fifo, pid = tmp_path / "sleeper.fifo", None
    command = sleeper(fifo)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, command, streamed)
                pid = await pid_written(fifo)
                nursery.cancel_scope.cancel()
            await exited(pid)
    finally:
        kill_leftover(pid)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_a_call_cancelled_after_its_command_exited_still_kills_what_it_left(
    tmp_path: Path, streamed: bool
) -> None:
    """`sh -c` exits at once, its `sleep` holding the stdout open, so the call goes on: its
    cancel (as its timeout) kills the `sleep`, though the command itself is gone."""
    fifo, pid = tmp_path / "pids.fifo", None
    os.mkfifo(fifo)
    command = ["sh", "-c", 'sleep 1000 & echo $! $$ > "$0"', str(fifo)]
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, command, streamed)
                pid, shell = await pids_written(fifo)
                await exited(shell)
                nursery.cancel_scope.cancel()
            await exited(pid)
    finally:
        kill_leftover(pid)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_what_a_command_left_running_when_it_exited_dies_as_its_call_ends(
    tmp_path: Path, streamed: bool
) -> None:
    """`sh -c` exits at once, leaving `sleep` with its output elsewhere: the call ends, and
    the `sleep` with it: nothing a call started outlives it."""
    fifo, pid = tmp_path / "pid.fifo", None
    os.mkfifo(fifo)
    command = ["sh", "-c", 'sleep 1000 >/dev/null 2>&1 & echo $! > "$0"', str(fifo)]
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, command, streamed)
                pid = await pid_written(fifo)
            await exited(pid)
    finally:
        kill_leftover(pid)


@attrs.define
class Unending:
    """Stands for a killed process that does not end yet (stuck in the kernel): its group is
    the real `pid`'s, its wait lasts far longer than any stop may."""

    pid: int

    async def wait(self) -> int:
        await trio.sleep(1000 * KILL_WAIT_SECONDS)
        return -signal.SIGKILL


async def test_a_killed_command_that_does_not_end_is_waited_for_a_bounded_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    process = await open_command(["sleep", "1000"])
    try:
        started = trio.current_time()
        await kill_group(cast(trio.Process, Unending(process.pid)))
        assert trio.current_time() - started == KILL_WAIT_SECONDS
        assert await process.wait() == -signal.SIGKILL  # its group was killed all the same
    finally:
        process.kill()
        await process.wait()


@attrs.define
class EndlessOutput:
    """A command's stdout that never ends, counting the bytes read from it."""

    read: int = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = b"x" * min(max_bytes or 65536, 65536)
        self.read += len(data)
        await trio.lowlevel.checkpoint()
        return data


async def test_output_is_read_no_further_than_one_byte_past_its_cap() -> None:
    """However much a command writes, what is kept of it stays bounded."""
    stdout = EndlessOutput()
    with pytest.raises(ServedCommandFailed) as refused:
        await read_output(stdout.receive_some, ["yes"])
    assert stdout.read == MAX_OUTPUT_BYTES + 1
    assert str(refused.value) == f"yes wrote more than {MAX_OUTPUT_BYTES} bytes and was killed"


async def test_a_command_writing_past_its_output_cap_is_killed_with_what_it_started(
    tmp_path: Path,
) -> None:
    """`sh -c` starts `sleep`, then writes more than an answer carries and waits: the call
    fails at once with why, and both are killed, where it used to wait out the timeout."""
    fifo, pids = tmp_path / "pid.fifo", []
    os.mkfifo(fifo)
    script = f'sleep 1000 & echo $! > "$0"; head -c {OVER_THE_OUTPUT_CAP} /dev/zero; wait'

    async def note_pid() -> None:
        pids.append(await pid_written(fifo))

    try:
        with trio.fail_after(30):  # well within the command's own TIMEOUT
            async with trio.open_nursery() as nursery:
                nursery.start_soon(note_pid)
                with pytest.raises(ServedCommandFailed) as refused:
                    await run_command(["sh", "-c", script, str(fifo)], None, TIMEOUT, nursery)
            await exited(pids[0])
    finally:
        kill_leftover(pids[0] if pids else None)
    assert str(refused.value) == f"sh wrote more than {MAX_OUTPUT_BYTES} bytes and was killed"


async def test_indented_json_over_a_payload_that_decodes_within_one_answers() -> None:
    """A command printing indented JSON (`jq .`) writes a few times the payload it decodes
    to: measured as written it would pass MAX_PAYLOAD_BYTES, decoded it fits and answers."""
    items = [f"item-{n:05}" for n in range(6000)]  # ~100 KiB compact, ~200 KiB indented
    script = f"import json; print(json.dumps({items!r}, indent=8))"
    assert len(json.dumps(items, indent=8)) > MAX_PAYLOAD_BYTES > len(json.dumps(items))
    with trio.fail_after(30):
        assert await run([sys.executable, "-c", script], streamed=False) == [items]


# a command's stderr well past what is kept of it, and past a pipe's buffer: it is read as
# the command writes, or the command would block
OVER_THE_STDERR_TAIL = 64 * STDERR_TAIL_BYTES
# writes that much to stderr, then its last words there, then what holds its stderr (a file's
# size, a pipe's 0) to stdout, and exits with argv[1]
WRITE_STDERR = (
    "import os, sys\n"
    f"for _ in range({OVER_THE_STDERR_TAIL // 1000}): os.write(2, b'x' * 1000)\n"
    "os.write(2, b'last words')\n"
    "print(os.fstat(2).st_size)\n"
    "sys.exit(int(sys.argv[1]))\n"
)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_a_command_writing_past_the_stderr_tail_leaves_no_more_of_it(
    streamed: bool,
) -> None:
    """However much a command writes to stderr, no more than its tail is kept (nothing on
    disk grows with it), and its output answers as ever."""
    with trio.fail_after(30):
        answered = await run([sys.executable, "-c", WRITE_STDERR, "0"], streamed)
    assert len(answered) == 1 and 0 <= answered[0] <= STDERR_TAIL_BYTES


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
async def test_a_failed_command_past_the_stderr_tail_fails_with_its_last_words(
    streamed: bool,
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as readers:
            with pytest.raises(ServedCommandFailed) as failed:
                command = [sys.executable, "-c", WRITE_STDERR, "3"]
                if streamed:
                    async with contextlib.aclosing(
                        stream_command(command, None, TIMEOUT, readers)
                    ) as lines:
                        assert [line async for line in lines] == [0]
                else:
                    await run_command(command, None, TIMEOUT, readers)
    tail = ("x" * MAX_STDERR_CHARS + "last words")[-MAX_STDERR_CHARS:]
    assert str(failed.value) == f"{sys.executable} exited 3: {tail}"


LEFTOVER_TIMEOUT = 20.0  # seconds the commands below may take: a bound, not a pause
# starts `sleep` in a session of its own (out of the group a failure kills) holding the pipe
# named by argv[2] (the other goes to /dev/null), writes its pid to argv[1], says why on
# stderr and exits with argv[3]
LEAVE_A_PIPE_HELD = (
    "import os, subprocess, sys\n"
    "held = subprocess.Popen(\n"
    "    ['sleep', '1000'],\n"
    "    stdout=subprocess.DEVNULL if sys.argv[2] == 'stderr' else None,\n"
    "    stderr=subprocess.DEVNULL if sys.argv[2] == 'stdout' else None,\n"
    "    start_new_session=True,\n"
    ")\n"
    "with open(sys.argv[1], 'w') as fifo: fifo.write(f'{held.pid}\\n')\n"
    "os.write(2, b'oops')\n"
    "sys.exit(int(sys.argv[3]))\n"
)
# the same from `sh`, its `sleep` left in its group holding both pipes
LEAVE_BOTH_PIPES_IN_THE_GROUP = 'sleep 1000 & echo $! > "$0"; printf oops >&2; exit 3'
STREAM_NET = "lan"  # the network the streams below are opened in, to the daemon's own device
UNREACHABLE = "ws://127.0.0.1:9/v1"  # its broker, which never answers: the daemon reaches itself


@contextlib.asynccontextmanager
async def stream_to(command: list[str], home: Path) -> AsyncIterator[BinaryStream]:
    """A binary stream to `command` as `stream serve` runs it (`run_piped`), through a real
    daemon tree in `home` to its own device, the opener's end of data sent."""
    async with serving(home) as daemon, MeshClient(daemon.paths.socket) as client:
        await client.call("network_add", {"config": {"id": STREAM_NET, "brokers": [UNREACHABLE]}})
        me = (await client.call("status"))["device_id"]
        await client.serve_stream(STREAM_NET, "piped", functools.partial(run_piped, command))
        async with await client.open_stream(STREAM_NET, me, "piped") as stream:
            await stream.send_eof()
            yield stream


async def read_to_end(stream: BinaryStream) -> tuple[bytes, StreamError | None]:
    """What the other end of `stream` sent, and the error it ended with, if any."""
    received = bytearray()
    try:
        while data := await stream.receive_some():
            received += data
    except StreamError as error:
        return bytes(received), error
    return bytes(received), None


async def failure_of(serve: str, command: list[str], home: Path, readers: trio.Nursery) -> str:
    """The failure `command` ends in as `serve` runs it, having written no output: what
    `rpc serve` answers the caller, or the reset the opener of a `stream serve` stream reads
    (`remote_error`, as ever)."""
    if serve == "stream serve":
        async with stream_to(command, home) as stream:
            received, error = await read_to_end(stream)
        assert received == b"" and error is not None and error.code == "remote_error"
        return error.message
    with pytest.raises(ServedCommandFailed) as failed:
        if serve == "rpc serve --stream":
            chunks = stream_command(command, None, LEFTOVER_TIMEOUT, readers)
            async with contextlib.aclosing(chunks):
                assert [chunk async for chunk in chunks] == []
        else:
            await run_command(command, None, LEFTOVER_TIMEOUT, readers)
    return str(failed.value)


@pytest.mark.parametrize("serve", ["rpc serve", "rpc serve --stream", "stream serve"])
@pytest.mark.parametrize("held", ["stderr", "stdout", "both, in its group"])
async def test_a_failed_command_whose_pipe_a_leftover_holds_fails_with_its_status(
    tmp_path: Path, held: str, serve: str
) -> None:
    """A command exits 3 leaving a process holding its stderr, its stdout or both: the call
    (or stream) fails with that status and what it wrote once the leftover in its group was
    killed, or PIPES_CLOSE_GRACE passed for one outside it, where a call used to wait out the
    timeout and say the command ran too long, and a stream to stay open until its reset."""
    fifo, pids = tmp_path / "pid.fifo", []
    os.mkfifo(fifo)

    async def note_pid() -> None:
        pids.append(await pid_written(fifo))

    if held == "both, in its group":
        command, program = ["sh", "-c", LEAVE_BOTH_PIPES_IN_THE_GROUP, str(fifo)], "sh"
    else:
        command = [sys.executable, "-c", LEAVE_A_PIPE_HELD, str(fifo), held, "3"]
        program = sys.executable
    try:
        with trio.fail_after(LEFTOVER_TIMEOUT + 30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(note_pid)
                failure = await failure_of(serve, command, tmp_path, nursery)
    finally:
        kill_leftover(pids[0] if pids else None)
    assert failure == f"{program} exited 3: oops"


async def test_a_stream_whose_command_exits_0_ends_though_a_leftover_holds_its_stderr(
    tmp_path: Path,
) -> None:
    """A command exits 0 leaving a process outside its group holding its stderr: its stdout
    ended, the stream ends cleanly, where it used to wait for that stderr's end until the
    opener reset it."""
    fifo, pids = tmp_path / "pid.fifo", []
    os.mkfifo(fifo)
    command = [sys.executable, "-c", LEAVE_A_PIPE_HELD, str(fifo), "stderr", "0"]
    try:
        with trio.fail_after(30):
            async with stream_to(command, tmp_path) as stream:
                pids.append(await pid_written(fifo))
                assert await read_to_end(stream) == (b"", None)
                await stream.finish()
    finally:
        kill_leftover(pids[0] if pids else None)


LATE_LINES = 1000  # lines written once told: a few KiB, well within a pipe's buffer
# writes a line and its pid to argv[1], then, once sent SIGUSR1, LATE_LINES more, and exits 3:
# those stay in its stdout pipe until read
WRITE_LINES_AND_FAIL = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
    "print('first', flush=True)\n"
    "with open(sys.argv[1], 'w') as fifo: fifo.write(f'{os.getpid()}\\n')\n"
    "signal.sigwait({signal.SIGUSR1})\n"
    f"for n in range({LATE_LINES}): print(n)\n"
    "sys.exit(3)\n"
)


async def test_a_failed_command_s_lines_reach_a_caller_slower_than_the_grace(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A streamed command exits 3 leaving lines its caller has not taken yet: each still
    answers, however long after the exit the caller takes them. PIPES_CLOSE_GRACE bounds a
    wait for more, not the reading of what the command wrote."""
    mock_clock.rate = 1.0  # fail_after bounds the wait in real time; the caller's delay jumps
    fifo = tmp_path / "pid.fifo"
    os.mkfifo(fifo)
    command = [sys.executable, "-c", WRITE_LINES_AND_FAIL, str(fifo)]
    late: list[Any] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as readers:
            chunks = stream_command(command, None, TIMEOUT, readers)
            async with contextlib.aclosing(chunks):
                assert await anext(chunks) == "first"
                pid = await pid_written(fifo)
                os.kill(pid, signal.SIGUSR1)
                await exited(pid)
                await trio.testing.wait_all_tasks_blocked()  # its exit seen, its group killed
                mock_clock.jump(2 * PIPES_CLOSE_GRACE)  # the caller takes its time
                with pytest.raises(ServedCommandFailed) as failed:
                    async for chunk in chunks:
                        late.append(chunk)
    assert late == list(range(LATE_LINES))
    assert str(failed.value) == f"{sys.executable} exited 3: (no stderr)"
