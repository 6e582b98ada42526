"""What `meshactors rpc serve` and `stream serve` share: the command taken from after `--`,
serving until a stop, and commands that leave nothing running behind them; and running the
command `rpc serve` serves, once per call, its stdout answering whole, or (with `--stream`)
each line it writes answering as one chunk while it runs; the pipes of a command either
serve runs (`command_running`), which end within a grace once it failed."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from meshactors.cli.common import (
    EXIT_BY_ERROR_CODE,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandFailed,
    fail,
    say,
)
from meshactors.client import UNSURE_CODES, EventStream, MeshClient
from meshactors.network.payload import MAX_PAYLOAD_BYTES
from meshactors.stop_signals import stop_signals

MAX_STDERR_CHARS = 2000  # the tail of a failed command's stderr sent back as the error message
# bytes kept of a command's stderr, read from a pipe as it writes (nothing on disk): enough to
# decode the tail, a character being up to 4
STDERR_TAIL_BYTES = 4 * MAX_STDERR_CHARS
# seconds a failed command's stderr is read for once its group is killed, and its stdout waited
# on for more: a process that left the group (a new session) may hold either pipe open for ever
PIPES_CLOSE_GRACE = 1.0
# a command's stdout kept for one answer: its JSON, indented, may be a few times the compact
# payload it decodes to, which the payload's own check (MAX_PAYLOAD_BYTES) then measures
MAX_OUTPUT_BYTES = 8 * MAX_PAYLOAD_BYTES
KILL_WAIT_SECONDS = 5.0  # a killed command is waited for this long at most, then left unreaped

# the next bytes of a command's stdout, at most so many (None: any)
Receive = Callable[[int | None], Awaitable[bytes | bytearray]]


class ServedCommandFailed(Exception):
    """The served command failed; the message (exit status, stderr's tail) answers the caller."""


def served_command(serve: str, method: str, rest: list[str]) -> tuple[list[str], list[str]]:
    """`serve METHOD -- CMD` (or `NETWORK METHOD -- CMD`) split into the words before `--` and
    the command after it, which must be on PATH: exits 2 for an option after METHOD or no
    command, 6 for a command that cannot run."""
    if rest and rest[0] != "--" and rest[0].startswith("-"):
        fail(f"options go before METHOD: {serve} {rest[0]} … {method} -- CMD", EXIT_USAGE)
    words = [method]
    if len(rest) > 1 and rest[0] != "--" and rest[1] == "--":  # NETWORK METHOD -- CMD
        words, rest = [method, rest[0]], rest[1:]
    command = rest[1:] if rest[:1] == ["--"] else rest
    if not command:
        fail("give the command to run after --", EXIT_USAGE)
    if shutil.which(command[0]) is None:
        what = f"cannot run {command[0]!r}: not found or not executable"
        fail(what, EXIT_NOT_FOUND, "command_not_found")
    return words, command


async def serve_until_stopped(
    socket: Path, network: str, method: str, claim: Callable[[MeshClient], Awaitable[None]]
) -> None:
    """Claim METHOD with `claim` and serve until SIGTERM (a plain `kill`), SIGHUP (the terminal
    closed; not under `nohup`) or Ctrl-C: each closes the client, which cancels every handler,
    and each kills its command on the way out. The commands run in sessions of their own, so
    the terminal's hangup reaches the serve alone. The signals are caught before the claim, so
    no command starts that one would orphan. Ctrl-C is received as they are, never raised as
    KeyboardInterrupt: one raised in a client task (a handler's, the connection's) would end
    the serve in a traceback, exit 1, and could leave a command it had just started running.
    A claim lost for good (another program claimed METHOD, or the daemon refused it back)
    ends the serve with one line and its exit code."""
    with trio.open_signal_receiver(*stop_signals(signal.SIGTERM, signal.SIGINT)) as stops:
        async with MeshClient(socket) as client:
            with client.events() as events:  # before the claim: no loss of it goes unseen
                await claim(client)
                say(f"serving {method} on {network}; Ctrl-C stops", file=sys.stderr, flush=True)
                lost = None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_on_stop, stops, nursery.cancel_scope)
                    lost = await claim_lost(events, network, method)
                    nursery.cancel_scope.cancel()
    if lost is not None:
        raise lost


async def _cancel_on_stop(stops: AsyncIterator[int], scope: trio.CancelScope) -> None:
    """Cancel `scope` at the first stop signal."""
    async for _ in stops:
        scope.cancel()
        return


async def claim_lost(events: EventStream, network: str, method: str) -> CommandFailed | None:
    """Once the client dropped its claim of METHOD on NETWORK for good (it serves it no more),
    the failure that ends the serve: exit 7 when another program claimed it (last claim wins),
    the refusal's exit code when the daemon refused to give it back after a restart. A failure
    that may pass (UNSURE_CODES) does not end it: the client keeps the claim and tries again."""
    async for event in events:
        if (event.get("network"), event.get("method")) != (network, method):
            continue
        if event.get("kind") == "handler_displaced" and event.get("by") is not None:
            said = f"{method} on {network} was claimed by another program; stopping"
            return CommandFailed("conflict", said, EXIT_REFUSED)
        if event.get("kind") == "client_replay_failed" and event.get("code") not in UNSURE_CODES:
            code, message = str(event.get("code")), str(event.get("message"))
            said = f"{method} on {network} could not be claimed again: {code}: {message}; stopping"
            return CommandFailed(code, said, EXIT_BY_ERROR_CODE.get(code, EXIT_FAILURE))
    return None  # the client closed


async def open_command(command: list[str], **options: Any) -> trio.Process:
    """Start `command` in a session, so a process group, of its own: `kill_group` then reaches
    whatever it starts in turn (`sh -c`'s children), and a Ctrl-C meant for the serve is not
    sent to it by the terminal."""
    return await trio.lowlevel.open_process(command, start_new_session=True, **options)


async def kill_group(process: trio.Process) -> None:
    """SIGKILL every process in the command's group, itself if it still runs, and reap it:
    nothing it started outlives its call, its stream or the serve, even once it exited by
    itself. The group's id is the command's pid (a session of its own), and no new group can
    take that id while a process of this one lives; with none left, killpg finds no one, or
    (the id reused since the command was reaped) another user's group it may not signal. The
    wait is shielded but bounded: one that SIGKILL cannot end yet (stuck in the kernel) does not
    hold up its call's end or the serve's stop."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with trio.move_on_after(KILL_WAIT_SECONDS, shield=True):
        await process.wait()


@attrs.define(eq=False)
class StderrTail:
    """The last STDERR_TAIL_BYTES a command wrote to its stderr pipe, read while it writes:
    memory stays bounded, and nothing on disk grows, however much it writes."""

    kept: bytearray = attrs.field(factory=bytearray)
    closed: trio.Event = attrs.field(factory=trio.Event)  # the pipe's end: all of it read

    async def collect(self, stderr: trio.abc.ReceiveStream) -> None:
        """Read `stderr` until it closes, keeping its tail."""
        while data := await stderr.receive_some():
            self.kept.extend(data)
            del self.kept[:-STDERR_TAIL_BYTES]
        self.closed.set()


@attrs.define(eq=False)
class CommandPipes:
    """A served command's pipes as its call (or binary stream) reads them: its stderr's tail
    kept by a task of its own, which also waits for its exit. Once it exited with failure,
    what it left in its group is killed, its stderr is read for PIPES_CLOSE_GRACE more at
    most, and its stdout as long as more comes within PIPES_CLOSE_GRACE: a process that left
    the group may hold either open for ever, and the failure answers, not what such a process
    writes; what the command wrote is still read (a streamed answer's lines, a stream's bytes,
    however slowly the other end takes them). After an exit 0 its stdout is read to its end
    (or the call's deadline, the stream's reset): that is the answer, which what it left
    running may still be writing."""

    process: trio.Process
    command: list[str]
    tail: StderrTail = attrs.field(factory=StderrTail)
    ended: trio.Event = attrs.field(factory=trio.Event)  # exited, and after a failure its grace
    failure: ServedCommandFailed | None = None  # set before `ended`, after a failed exit
    exited_failing: bool = False  # a read of its stdout then waits PIPES_CLOSE_GRACE at most
    stdout_read: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # the current read
    watching: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # cancelled: call's end
    group_killed: bool = False  # `end_group` ran: none of the group is left to kill

    async def watch(self, stderr: trio.abc.ReceiveStream) -> None:
        """Keep the tail of `stderr` and wait for the command's exit; after a failed one, kill
        its group, bound the reads of both pipes by the grace, and note the failure with the
        tail."""
        with self.watching:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.tail.collect, stderr)
                status = await self.process.wait()
                if status != 0:
                    await self.end_group()  # what it left in its group: pipes close
                    self.exited_failing = True
                    grace_ends = trio.current_time() + PIPES_CLOSE_GRACE
                    self.stdout_read.deadline = min(self.stdout_read.deadline, grace_ends)
                    with trio.move_on_at(grace_ends):
                        await self.tail.closed.wait()
                    nursery.cancel_scope.cancel()
                    self.failure = command_failed(self.command, status, bytes(self.tail.kept))
                self.ended.set()

    async def end_group(self) -> None:
        """`kill_group` the command's group, once: SIGKILL leaves none of it, and a second
        killpg, later, could reach a group that took its id since the command was reaped."""
        if not self.group_killed:
            self.group_killed = True
            await kill_group(self.process)

    async def receive_output(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The next bytes of the command's stdout: b"" at its end, and when a command that
        exited with failure wrote none for PIPES_CLOSE_GRACE."""
        assert self.process.stdout is not None
        wait = PIPES_CLOSE_GRACE if self.exited_failing else math.inf
        self.stdout_read = trio.CancelScope(deadline=trio.current_time() + wait)
        with self.stdout_read:
            return await self.process.stdout.receive_some(max_bytes)
        return b""

    async def exit_failure(self) -> ServedCommandFailed | None:
        """Once the command exited: None when it exited 0, else (its grace passed) its failure
        with the last of what it wrote to stderr."""
        await self.ended.wait()
        return self.failure


@contextlib.asynccontextmanager
async def command_running(
    command: list[str], stdin: int | IO[bytes], readers: trio.Nursery
) -> AsyncIterator[CommandPipes]:
    """`command` running with `stdin` (a file, or subprocess.PIPE), stdout and stderr pipes,
    a task in `readers` keeping stderr's tail and watching for its exit, and its group killed
    when the block ends, however it ends, and that task ended (a process that left the group
    may hold stderr): what `rpc serve` and `stream serve` run a command in."""
    pipe = subprocess.PIPE
    process = await open_command(command, stdin=stdin, stdout=pipe, stderr=pipe)
    assert process.stderr is not None
    pipes = CommandPipes(process, command)
    readers.start_soon(pipes.watch, process.stderr)
    try:
        yield pipes
    finally:
        pipes.watching.cancel()
        await pipes.end_group()


@contextlib.asynccontextmanager
async def _started(
    command: list[str], payload: Any, readers: trio.Nursery
) -> AsyncIterator[CommandPipes]:
    """`command` running (`command_running`) with `payload` as JSON on stdin (a file: no task
    of ours)."""
    with tempfile.TemporaryFile() as stdin:
        stdin.write(json.dumps(payload).encode())
        stdin.seek(0)
        async with command_running(command, stdin, readers) as pipes:
            yield pipes


async def run_command(
    command: list[str], payload: Any, timeout: float, readers: trio.Nursery
) -> Any:
    """Run `command` with `payload` as JSON on stdin; its stdout (JSON, else text; at most
    MAX_OUTPUT_BYTES) answers, a failure raises with its exit status and the tail of its
    stderr (read by a task in `readers`) as the message."""
    async with _started(command, payload, readers) as pipes:
        output, failure = b"", None
        with trio.move_on_after(timeout) as scope:
            output = await read_output(pipes.receive_output, command)
            failure = await pipes.exit_failure()
        if scope.cancelled_caught:
            raise _too_long(command, timeout)
        if failure is not None:
            raise failure
    return _decoded(output)


async def read_output(receive: Receive, command: list[str]) -> bytes:
    """All of stdout (`receive` its next bytes) until it ends; ServedCommandFailed as soon as
    it passes MAX_OUTPUT_BYTES, one byte past it read and no more: memory stays bounded
    however much the command writes, and the command is killed as for a timeout (its block
    in `run_command` ends)."""
    output = bytearray()
    while data := await receive(MAX_OUTPUT_BYTES + 1 - len(output)):
        output += data
        if len(output) > MAX_OUTPUT_BYTES:
            said = f"{command[0]} wrote more than {MAX_OUTPUT_BYTES} bytes and was killed"
            raise ServedCommandFailed(said)
    return bytes(output)


async def stream_command(
    command: list[str], payload: Any, timeout: float, readers: trio.Nursery
) -> AsyncGenerator[Any, None]:
    """Run `command` as `run_command` does, yielding each line of its stdout (JSON, else text)
    as soon as it is written (its stderr read by a task in `readers`: a generator must not
    yield inside a nursery of its own)."""
    deadline = trio.current_time() + timeout
    async with _started(command, payload, readers) as pipes:
        async for line in _lines(pipes.receive_output, deadline, command, timeout):
            yield _decoded(line)
        failure = None
        with trio.move_on_at(deadline) as scope:
            failure = await pipes.exit_failure()
        if scope.cancelled_caught:
            raise _too_long(command, timeout)
        if failure is not None:
            raise failure


async def _lines(
    receive: Receive, deadline: float, command: list[str], timeout: float
) -> AsyncIterator[bytes]:
    """The non-blank lines of stdout (`receive` its next bytes) until it ends, each at most
    MAX_PAYLOAD_BYTES."""
    buffer = b""
    while True:
        data = None
        with trio.move_on_at(deadline):
            data = await receive(None)
        if data is None:
            raise _too_long(command, timeout)
        *complete, buffer = (buffer + data).split(b"\n") if data else [buffer, b""]
        for line in complete:
            _check_line(line, command)
            if line.strip():
                yield line
        if not data:
            return
        _check_line(buffer, command)  # refused before the rest of a long line is read


def _check_line(line: bytes, command: list[str]) -> None:
    """ServedCommandFailed for a line no chunk can carry, finished or not."""
    if len(line) > MAX_PAYLOAD_BYTES:
        raise ServedCommandFailed(f"{command[0]} wrote a line over {MAX_PAYLOAD_BYTES} bytes")


def _decoded(text: bytes) -> Any:
    """JSON if it parses, else the text as it is."""
    decoded = text.decode(errors="replace")
    try:
        return json.loads(decoded)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than it parses
        return decoded


def command_failed(command: list[str], status: int, stderr: bytes) -> ServedCommandFailed:
    """The failure of `command`: its exit status and the tail of its stderr."""
    detail = stderr.decode(errors="replace").strip()[-MAX_STDERR_CHARS:] or "(no stderr)"
    return ServedCommandFailed(f"{command[0]} exited {status}: {detail}")


def _too_long(command: list[str], timeout: float) -> ServedCommandFailed:
    return ServedCommandFailed(f"{command[0]} ran longer than {timeout:g}s and was killed")
