"""Helpers shared by the in-process and end-to-end suites."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

import attrs
import trio
import trio.testing

from meshactors.actors import Actor
from meshactors.daemon.lock import read_running_pid
from meshactors.daemon.services import Services
from meshactors.event_hub import EventHub
from meshactors.store.actor import StoreActor
from meshactors.store.events import Event

CLI_TIMEOUT = 60  # seconds any one CLI command may take
PR_CAPBSET_DROP = 24  # prctl(2): drop a capability from the calling thread's bounding set
FILE_OVERRIDE_CAPS = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: root reads any file


def obeying_file_modes() -> None:
    """`preexec_fn` for a child that file modes bind even when run as root (its bounding set
    loses the capabilities that override them), so a test can make a file unreadable to it."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in FILE_OVERRIDE_CAPS:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def no_file_growth() -> None:
    """`preexec_fn` for a child that can write no byte to a regular file (EFBIG; Python ignores
    SIGXFSZ), root or not: a home it cannot write to, as a full or read-only one is."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@attrs.define(eq=False)
class HeldOp:
    """Stands in for a daemon op's handler (`hold_op`): each request waits for `go` before
    the real handler runs; `entered` is set once one is waiting, `finished` once one ran."""

    real: Callable[[Any, Any], Awaitable[Any]]
    entered: trio.Event = attrs.field(factory=trio.Event)
    go: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)

    async def __call__(self, session: Any, params: Any) -> Any:
        self.entered.set()
        await self.go.wait()
        try:
            return await self.real(session, params)
        finally:
            self.finished.set()


def hold_op(services: Services, name: str) -> HeldOp:
    """Have the running daemon's op `name` wait for the returned HeldOp's `go`."""
    op = services.ops.ops[name]
    held = HeldOp(op.handler)
    services.ops.ops[name] = attrs.evolve(op, handler=held)
    return held


@attrs.define(eq=False)
class StartGate(Actor):
    """A child that says it started only once `opened`: while it starts, its supervisor
    handles nothing else, and the requests sent to it meanwhile wait in order."""

    kind: ClassVar[str] = "gate"

    starting: trio.Event = attrs.field(factory=trio.Event)
    opened: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starting.set()
        await self.opened.wait()
        task_status.started()
        await trio.sleep_forever()


@attrs.define
class LineClient:
    """Speaks JSON lines to the control socket; answers and events are kept apart."""

    stream: trio.SocketStream
    buffer: bytearray = attrs.field(factory=bytearray)
    next_id: int = 1

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, op: str, **params: Any) -> int:
        request_id = self.next_id
        self.next_id += 1
        await self.send_raw(json.dumps({"id": request_id, "op": op, **params}).encode() + b"\n")
        return request_id

    async def frame(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        frame: dict[str, Any] = json.loads(line)
        return frame

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        request_id = await self.send(op, **params)
        while True:
            frame = await self.frame()
            if frame.get("id") == request_id:
                return frame

    async def aclose(self) -> None:
        await self.stream.aclose()


@attrs.frozen
class Home:
    """One MESHACTORS_HOME and a way to run the CLI against it."""

    path: Path

    @property
    def socket(self) -> Path:
        return self.path / "daemon.sock"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHACTORS_")}
        return env | {"MESHACTORS_HOME": str(self.path)}

    def cli(
        self,
        *args: str,
        check: bool = True,
        timeout: float = CLI_TIMEOUT,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `meshactors ARGS…` to completion (killed, TimeoutExpired, after `timeout` s)."""
        result = subprocess.run(
            [sys.executable, "-m", "meshactors", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=preexec_fn,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"meshactors {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def popen(self, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
        """Start `meshactors ARGS…` in the background (`stdin`: e.g. subprocess.PIPE)."""
        return subprocess.Popen(
            [sys.executable, "-m", "meshactors", *args],
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def daemon_pid(self) -> int | None:
        return read_running_pid(self.path / "daemon.pid")

    def stop_daemon(self) -> None:
        """Stop whatever daemon this home started: `daemon down`, then SIGKILL if it lingers."""
        pid = self.daemon_pid()
        if pid is not None:
            self.cli("daemon", "down", check=False)
            if self.daemon_pid() is not None:
                os.kill(pid, 9)


@contextmanager
def listening_unix_socket(path: Path) -> Iterator[socket.socket]:
    """A listening Unix stream socket bound at `path`, as a service manager holds one for socket
    activation; closed when the block ends."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        yield sock


def answer_one_request_with(sock: socket.socket, error: dict[str, Any]) -> None:
    """Accept one connection on the listening `sock` and answer its first request with the
    error object `error`, as a daemon refusing it would."""
    connection, _ = sock.accept()
    with connection, connection.makefile("rwb") as lines:
        request = json.loads(lines.readline())
        lines.write(json.dumps({"id": request["id"], "ok": False, "error": error}).encode() + b"\n")
        lines.flush()


async def client_id_of(connection: LineClient) -> str:
    """The id the daemon gave `connection` (its `status` says)."""
    client_id: str = (await connection.call("status"))["data"]["client_id"]
    return client_id


async def client_figures(inspector: LineClient, client_id: str) -> dict[str, Any]:
    """The figures `inspect` (asked over `inspector`) shows for the client actor of the
    connection `client_id`: found by its id, not by the order connections were made in."""
    tree = (await inspector.call("inspect"))["data"]
    control = next(child for child in tree["children"] if child["name"] == "control")
    (client,) = [child for child in control["children"] if child["name"] == f"client {client_id}"]
    figures: dict[str, Any] = client["figures"]
    return figures


async def refuse_writes(store: StoreActor, refuse: bool) -> None:
    """Make a state database refuse every write, as a full disk does, or take them again:
    SQLite's `query_only` fails them with SQLITE_READONLY, which the store answers as
    `storage` like SQLITE_FULL."""

    def set_query_only(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {int(refuse)}")

    await store.call(set_query_only, what="test: refuse writes")


def _nothing(conn: sqlite3.Connection) -> None:
    """A store call that does nothing: its answer says the calls queued before it are done."""


async def store_quiet(store: StoreActor, timeout: float) -> None:
    """Return once a round trip to the store finds no other call made meanwhile: what was set
    off before is answered and nothing follows (under a clock that stands still, only a store
    answer could start another call). Fails past `timeout`."""
    with trio.fail_after(timeout):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            before = store.calls
            await store.call(_nothing, what="test: wait for the store to be quiet")
            await trio.testing.wait_all_tasks_blocked()
            if store.calls == before + 1:
                return


async def publish(hub: EventHub, kind: str, *datas: dict[str, Any]) -> list[Event]:
    """Publish events through the running hub and return them as numbered, once it has."""
    live, _ = await hub.subscribe(len(datas) + 1024)
    with live:
        for data in datas:
            hub.publish(kind, data)
        numbered: list[Event] = []
        while len(numbered) < len(datas):
            item = await live.receive()
            if isinstance(item, Event) and item.kind == kind:
                numbered.append(item)
    return numbered


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler's steps of one task: each is a return from a schedule point."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def steps_of(work: Awaitable[None]) -> int:
    """How many times the current task was stepped while `work` ran: 0 when it never yielded."""
    counter = StepCounter(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    try:
        await work
    finally:
        trio.lowlevel.remove_instrument(counter)
    return counter.steps


def sleeper(fifo: Path) -> list[str]:
    """A served command whose `sleep` child outlives it unless its whole process group is
    killed; it writes the child's pid to the FIFO `fifo`, made here (see `pid_written`)."""
    os.mkfifo(fifo)
    return ["sh", "-c", 'sleep 1000 & echo $! > "$0"; wait', str(fifo)]


async def pids_written(fifo: Path) -> list[int]:
    """The pids a command writes to `fifo` on one line, once it has (the caller bounds the
    wait); the command's write blocks until this opens the FIFO."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # our own writer: no early EOF
    line = b""
    async with trio.lowlevel.FdStream(fd) as reader:
        while not line.endswith(b"\n"):
            line += await reader.receive_some()
    return [int(pid) for pid in line.split()]


async def pid_written(fifo: Path) -> int:
    """The pid a `sleeper` writes to `fifo`, once it has (the caller bounds the wait)."""
    (pid,) = await pids_written(fifo)
    return pid


async def exited(pid: int) -> None:
    """Return once process `pid` has exited: its pidfd turns readable then, child or not."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def kill_leftover(pid: int | None) -> None:
    """SIGKILL the `sleeper` child a failed test left running, if it had started."""
    if pid is not None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
