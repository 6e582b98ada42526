"""The `control` supervisor: the socket and TCP listeners, one temporary `client` per connection."""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import ClassVar

import attrs
import structlog
import trio

from meshactors.actors import (
    ASK_TIMEOUT,
    Actor,
    ActorGone,
    AskTimeout,
    ChildSpec,
    ChildStartFailed,
    Inbox,
    Reply,
    Restart,
    Supervisor,
    cleanup_scope,
    take_queued,
)
from meshactors.control.client import ClientActor
from meshactors.control.http import sniff
from meshactors.control.http_response import encode_alone, error_response
from meshactors.control.session import CutOff
from meshactors.control.tcp_auth import TCP_HOST, TcpAuth, TcpGate, load_or_create_token
from meshactors.daemon.services import Services
from meshactors.listen import ListenError, open_tcp_listeners
from meshactors.paths import SOCKET_PATH_FIX, kind_of, socket_path_too_long
from meshactors.wire.ipc import ErrorCode, OpError, error_frame

log = structlog.get_logger("meshactors.control")

MAX_CLIENTS = 4096  # connections served at once (fewer where open files are short); more are
# told so and closed
FILES_PER_CLIENT = 1  # open files a client connection holds: its socket
MAX_TCP_CLIENTS = 256  # of them over TCP, where anyone local may connect before any token is
# checked: the owner's Unix socket always keeps the rest. When they are all taken, a newcomer
# evicts the oldest that has not yet passed the token check (only when none is left is it refused)
LISTEN_BACKLOG = 4096  # = MAX_CLIENTS: a burst of connects waits in the kernel, not refused
CLIENT_SHUTDOWN_TIMEOUT = 2.0  # seconds a client's cleanup may take (releasing claims etc.)
REFUSAL_TIMEOUT = 1.0  # seconds a refused connection gets: to show what it speaks, take its answer
MAX_REFUSING = 64  # refused connections answered at once (each in its own task); more are
# closed unanswered, so a flood of silent connections costs neither the listener nor memory
CUT_OFF_REPORTS = MAX_CLIENTS  # clients' CutOff reports queued for control's count: never
# full in practice, as each client sends at most one (at its close), at most MAX_CLIENTS run at
# once, and control takes all that are queued whenever it runs; one that finds it full anyway
# is dropped (logged at debug), so a close never waits on it
CUT_OFF_LOG_INTERVAL = 60.0  # seconds: at most one info line per interval for cleanups cut off
SOCKET_MODE = 0o600
SD_LISTEN_FDS_START = 3  # the first descriptor a socket-activating service manager passes

BUSY_TCP = encode_alone(
    error_response(OpError(ErrorCode.UNAVAILABLE, f"at most {MAX_TCP_CLIENTS} TCP clients at once"))
)


class ActivationError(ValueError):
    """`LISTEN_FDS`/`LISTEN_PID` are set for us but do not describe one listening Unix socket."""

    code = "bad_socket_activation"


@attrs.define
class Tally:
    """A listener's connection counts, for `inspect`."""

    accepted: int = 0
    refused: int = 0
    failed: int = 0  # accepted, but control did not start their client: closed unanswered


@attrs.define
class CutOffs:
    """How many closed connections' cleanups ran out of time, as their clients told `control`.
    Harmless: core releases what a gone connection held on its own, so a cut-off is logged at
    info, once per CUT_OFF_LOG_INTERVAL: a burst of closes that outruns its deadline
    (thousands at once) writes one line, and the count tells the rest."""

    cleanups: int = 0
    _logged_at: float | None = None  # trio.current_time() of the last info line

    def count(self, report: CutOff) -> None:
        """Count a client's cleanups cut off, and log it (at debug within the interval)."""
        self.cleanups += report.cleanups
        now = trio.current_time()
        if self._logged_at is not None and now - self._logged_at < CUT_OFF_LOG_INTERVAL:
            log.debug("cleanup cut off: core releases the rest", client=report.client_id)
            return
        self._logged_at = now
        log.info(
            "cleanup cut off: core releases the rest",
            client=report.client_id,
            cut_off=self.cleanups,
        )


@attrs.define(eq=False)
class Control(Supervisor):
    """The `control` supervisor; it numbers its clients, and its figures also count their
    cleanups cut off, which no (temporary) client node outlives to show: each client's close
    reports them on `cut_off_reports` (one CutOff). Tasks of control's own alone write the
    number and the count; they, and their channels, outlive a restart of control, so no
    number is given twice and no report is lost to one."""

    cut_off_reports: Inbox[CutOff] = attrs.field(factory=lambda: Inbox(CUT_OFF_REPORTS))
    numbering: Inbox[Reply[int]] = attrs.field(factory=Inbox)  # the listeners' asks for one
    _cut_offs: CutOffs = attrs.field(factory=CutOffs, init=False)  # `_count_cut_offs` writes
    _numbered: int = attrs.field(default=0, init=False)  # the last client number given

    def figures(self) -> dict[str, object]:
        # read from the task that runs `inspect`, as every actor's figures are
        return {**super().figures(), "cleanups_cut_off": self._cut_offs.cleanups}

    def own_tasks(self) -> list[Callable[[], Awaitable[None]]]:
        return [self._count_cut_offs, self._number_clients]

    async def number_client(self) -> int:
        """A new client's number `n` (its id is `c<n>`): monotonic and never reused while the
        daemon runs, across the socket and TCP, whose listeners both ask."""
        return await self.numbering.ask(lambda reply: reply, timeout=ASK_TIMEOUT, what="number")

    async def _number_clients(self) -> None:
        """Answer each ask for a client number with the next: the one writer of the number."""
        async for reply in self.numbering.receiver:
            self._numbered += 1
            reply.ok(self._numbered)

    async def _count_cut_offs(self) -> None:
        """Count the clients' reports of cleanups cut off, all those queued at once: the one
        writer of the count."""
        reports = self.cut_off_reports.receiver
        async for first in reports:
            for report in [first, *take_queued(reports, CUT_OFF_REPORTS)]:
                self._cut_offs.count(report)


@attrs.define(eq=False)
class Admissions:
    """Turns accepted connections into `client c<n>` children of `control`, up to MAX_CLIENTS.

    Shared by every listener; `control` numbers the clients, so their ids are unique across
    the socket and TCP. A TCP client tells (on `_passed`) when its first request passes the
    token check; when all MAX_TCP_CLIENTS places are taken, the oldest that has not is stopped
    (by `control`, which cancels it) to make room, so strangers churn among themselves and the
    owner's connection gets a place (kept once it passed the check; MAX_TCP_CLIENTS newer ones
    can push it out before that).
    """

    control: Control
    services: Services
    max_clients: int = MAX_CLIENTS  # fewer where the open-file limit holds less
    # TCP clients stopped to make room before passing the token check (the TCP listener
    # shows it: on the Unix socket nobody is evicted)
    evicted: int = attrs.field(default=0, init=False)
    # node names of the TCP clients admitted, oldest first: whether each passed the token check
    _over_tcp: dict[str, bool] = attrs.field(factory=dict)
    _passed: trio.MemorySendChannel[str] = attrs.field(init=False)
    _passed_receive: trio.MemoryReceiveChannel[str] = attrs.field(init=False)
    # what a client is told when the daemon is full: as a JSON line, and as an HTTP answer
    _busy_line: bytes = attrs.field(init=False)
    _busy_http: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Never full: each TCP client sends once, and the TCP listener takes what is queued
        # before each admission, so at most the clients alive since then (and one more) wait.
        self._passed, self._passed_receive = trio.open_memory_channel[str](MAX_CLIENTS)
        busy = OpError(ErrorCode.UNAVAILABLE, f"at most {self.max_clients} clients at once")
        self._busy_line = error_frame(None, busy)
        self._busy_http = encode_alone(error_response(busy))

    async def _admit(self, stream: trio.SocketStream, tcp: TcpAuth | None) -> bool:
        """Start a client actor for `stream`, numbered by control; False when control did not,
        and it is closed."""
        name: str | None = None  # once numbered
        try:
            client_id = f"c{await self.control.number_client()}"
            name = f"client {client_id}"
            gate = None if tcp is None else TcpGate(tcp, name, self._passed)
            reports = self.control.cut_off_reports.sender
            actor = ClientActor(client_id, stream, self.services, reports, tcp=gate)
            spec = ChildSpec(
                name, actor, restart=Restart.TEMPORARY, shutdown_timeout=CLIENT_SHUTDOWN_TIMEOUT
            )
            await self.control.start_child(spec)
        except (ActorGone, AskTimeout, ChildStartFailed) as failed:
            await self._admission_failed(stream, name, failed)
            return False
        if tcp is not None:  # once its node exists, so an admission meanwhile cannot forget it
            self._over_tcp.setdefault(name, False)  # (its pass, if any, is still queued)
        return True

    async def _admission_failed(
        self, stream: trio.SocketStream, name: str | None, error: Exception
    ) -> None:
        """Close the connection of a client control did not number or start (the ask failed:
        control is stuck or stopping, or the client failed to start), so the listener goes on
        and the program is not left on a silent socket. Unanswered: a start that timed out may
        still be carried out, and a busy answer would then read and write the socket beside
        the client; the stop queued behind that start ends such a client (`name`), which finds
        its socket closed anyway and ends as if the program hung up."""
        if name is not None:  # (False when there is no room: it ends by itself)
            self.control.stop_child_nowait(name)
        await stream.aclose()
        log.warning("connection closed: control did not start its client", error=str(error))

    async def _refuse(
        self, refusals: trio.Nursery, stream: trio.SocketStream, tcp: TcpAuth | None, busy: bytes
    ) -> None:
        """Have `stream` told the daemon is busy, in a task of its own so the listener goes
        on accepting meanwhile; past MAX_REFUSING such tasks it is closed unanswered."""
        if len(refusals.child_tasks) >= MAX_REFUSING:
            await stream.aclose()
            return
        refusals.start_soon(self._tell_busy, stream, tcp, busy)

    async def _tell_busy(self, stream: trio.SocketStream, tcp: TcpAuth | None, busy: bytes) -> None:
        """Answer a refused connection `busy` (on the Unix socket in the protocol its first
        bytes show), within REFUSAL_TIMEOUT, and close it."""
        try:
            async with stream:
                with trio.move_on_after(REFUSAL_TIMEOUT):
                    if tcp is None:  # the Unix socket speaks both: answer in its own protocol
                        busy = self._busy_http if await _speaks_http(stream) else self._busy_line
                    await stream.send_all(busy)
        except trio.BrokenResourceError:  # it hung up before its answer: nothing to tell
            pass

    def _refusal(self, tcp: TcpAuth | None) -> bytes | None:
        """What a new connection is told when there is no room for it (on the Unix socket a
        JSON line, or an HTTP answer once it shows it speaks HTTP), or None; on TCP it gets the
        place of a stranger when there is one (see `_evict_stranger`)."""
        clients = {node.name for node in self.services.client_nodes()}
        if tcp is not None:
            self._take_passes(clients)
        if len(clients) >= self.max_clients:
            return self._busy_line if tcp is None else self._busy_http
        if tcp is None or len(self._over_tcp) < MAX_TCP_CLIENTS:
            return None
        if self._evict_stranger():
            self.evicted += 1
            return None
        return BUSY_TCP

    def _take_passes(self, clients: set[str]) -> None:
        """Forget the TCP clients that ended (not in `clients`), and mark those that told
        they passed the token check (the TCP listener's task alone reads them)."""
        self._over_tcp = {name: ok for name, ok in self._over_tcp.items() if name in clients}
        for name in take_queued(self._passed_receive, MAX_CLIENTS):
            if name in self._over_tcp:
                self._over_tcp[name] = True

    def _evict_stranger(self) -> bool:
        """Have `control` stop the oldest TCP client that has not passed the token check (its
        connection closes unanswered), without waiting: the newcomer's start is queued behind
        the stop, and one that fails costs the listener nothing. False when every one has
        passed, or when control's inbox is full (then the newcomer is refused)."""
        stranger = next((name for name, ok in self._over_tcp.items() if not ok), None)
        if stranger is None or not self.control.stop_child_nowait(stranger):
            return False
        del self._over_tcp[stranger]
        log.debug("tcp client evicted for a newcomer", client=stranger)
        return True

    async def accept_forever(
        self, listener: trio.SocketListener, tcp: TcpAuth | None, tally: Tally
    ) -> None:
        """Admit every connection `listener` accepts, or refuse it when full (see `_refusal`),
        counting them in `tally`."""
        async with trio.open_nursery() as refusals:
            while True:
                stream = await listener.accept()
                busy = self._refusal(tcp)
                if busy is None:
                    if await self._admit(stream, tcp):
                        tally.accepted += 1
                    else:
                        tally.failed += 1
                else:
                    await self._refuse(refusals, stream, tcp, busy)
                    tally.refused += 1


@attrs.define(eq=False)
class Listener(Actor):
    """Accepts connections on the Unix socket (JSON lines or HTTP) and admits each as a client."""

    kind: ClassVar[str] = "listener"

    path: Path
    admissions: Admissions
    inherited_fd: int | None = None  # a socket passed by the service manager, used over `path`
    tally: Tally = attrs.field(factory=Tally)

    def figures(self) -> dict[str, object]:
        return {
            "socket": str(self.path),
            "activated": self.inherited_fd is not None,
            **attrs.asdict(self.tally),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.inherited_fd is None:
            listener = await bind_unix_listener(self.path)
        else:
            listener = adopt_unix_listener(self.inherited_fd)
        try:
            task_status.started()
            await self.admissions.accept_forever(listener, None, self.tally)
        finally:
            with cleanup_scope():
                await listener.aclose()
                if self.inherited_fd is None:  # the manager's socket outlives us, by design
                    self.path.unlink(missing_ok=True)


@attrs.define(eq=False)
class TcpListener(Actor):
    """Accepts HTTP connections on 127.0.0.1:`port`; each request needs the bearer token."""

    kind: ClassVar[str] = "tcp"

    port: int  # 0 picks a free port; `bound_port` tells which
    token_file: Path
    admissions: Admissions
    bound_port: int | None = None
    tally: Tally = attrs.field(factory=Tally)

    def figures(self) -> dict[str, object]:
        return {
            "host": TCP_HOST,
            "port": self.bound_port,
            "token_file": str(self.token_file),
            **attrs.asdict(self.tally),
            "evicted": self.admissions.evicted,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        token = await trio.to_thread.run_sync(load_or_create_token, self.token_file)
        (listener,) = await open_tcp_listeners(TCP_HOST, self.port, backlog=LISTEN_BACKLOG)
        try:
            self.bound_port = listener.socket.getsockname()[1]
            auth = TcpAuth(token, self.bound_port)
            log.info("tcp listener ready", address=f"{TCP_HOST}:{self.bound_port}")
            task_status.started()
            await self.admissions.accept_forever(listener, auth, self.tally)
        finally:
            with cleanup_scope():
                await listener.aclose()


async def _speaks_http(stream: trio.abc.ReceiveStream) -> bool:
    """Whether a refused connection's first bytes begin an HTTP request (not for one that tells
    nothing within half of REFUSAL_TIMEOUT: the rest is for the answer, a JSON line)."""
    with trio.move_on_after(REFUSAL_TIMEOUT / 2):
        speaks_http, _ = await sniff(stream)
        return speaks_http is True
    return False


async def bind_unix_listener(path: Path) -> trio.SocketListener:
    """Listen on a Unix socket at `path`, mode 0600; the daemon lock removed any stale one.

    Raises ListenError naming the path when it is too long for a socket or something else
    is in its way.
    """
    too_long = socket_path_too_long(path)
    if too_long is not None:
        raise ListenError(
            errno.ENAMETOOLONG, f"cannot listen on {path}: {too_long} ({SOCKET_PATH_FIX})"
        )
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(str(path))  # inside the 0700 runtime dir: the mode race is moot
        except OSError as exc:
            reason = _bind_failure(path, exc)
            raise ListenError(exc.errno, f"cannot listen on {path}: {reason}") from exc
        os.chmod(path, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _bind_failure(path: Path, exc: OSError) -> str:
    """Why binding `path` failed, in words: for "address in use", what is in the way (the
    daemon lock removed a dead daemon's socket, so it is not that)."""
    if exc.errno != errno.EADDRINUSE:
        return (exc.strerror or str(exc)).lower()
    try:
        kind = kind_of(os.lstat(path).st_mode)
    except OSError:
        kind = "file"  # gone again since
    return f"a {kind} is in the way (remove it, or use --socket PATH)"


def adopt_unix_listener(fd: int) -> trio.SocketListener:
    """Listen on a copy of the inherited socket `fd`, so a restarted listener can adopt it again."""
    return trio.SocketListener(
        trio.socket.fromfd(fd, stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    )


def activated_socket(env: MutableMapping[str, str] | None = None) -> tuple[int, Path] | None:
    """The listening Unix socket systemd passed us (fd 3) and its path, or None when not
    socket-activated. The LISTEN_* variables are removed from `env` (default: os.environ) so no
    child process mistakes them for its own; one naming another pid is ignored.

    Raises ActivationError when they are meant for us but describe anything else.
    """
    if env is None:
        env = os.environ
    count = env.pop("LISTEN_FDS", None)
    pid = env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDNAMES", None)
    if count is None or pid != str(os.getpid()):
        return None
    if count != "1":
        raise ActivationError(f"LISTEN_FDS={count!r}: expected exactly one socket (the control)")
    return SD_LISTEN_FDS_START, inherited_socket_path(SD_LISTEN_FDS_START)


def inherited_socket_path(fd: int) -> Path:
    """The path of the listening Unix stream socket `fd`; ActivationError if it is not one."""
    try:
        sock = stdlib_socket.socket(fileno=fd)  # detects family and type; detached below
    except OSError as exc:
        raise ActivationError(f"descriptor {fd} is not a usable socket: {exc}") from None
    try:
        listening = sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN)
        name = sock.getsockname()
        shape = (sock.family, sock.type)
    finally:
        sock.detach()
    if shape != (stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM) or not listening:
        raise ActivationError(f"descriptor {fd} is not a listening Unix stream socket")
    if not isinstance(name, str) or not name.startswith("/"):
        raise ActivationError(f"descriptor {fd} is not bound to a filesystem path ({name!r})")
    os.set_inheritable(fd, False)  # ours alone, like every descriptor we open ourselves
    return Path(name)


def control_supervisor(
    socket_path: Path,
    services: Services,
    tcp_port: int | None = None,
    inherited_fd: int | None = None,
    max_clients: int = MAX_CLIENTS,
) -> Control:
    """The `control` subtree: the socket listener (bound, or adopted from the service manager),
    the optional `tcp` listener, and their connections (at most `max_clients`) as siblings."""
    control = Control()
    admissions = Admissions(control, services, max_clients)
    listener = Listener(socket_path, admissions, inherited_fd)
    control.children = [ChildSpec("listener", listener)]
    if tcp_port is not None:
        tcp = TcpListener(tcp_port, services.paths.token_file, admissions)
        control.children.append(ChildSpec("tcp", tcp))
    return control
