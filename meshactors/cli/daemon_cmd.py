"""`meshactors daemon up|down|status|version|accept-host|install-service|uninstall-service`:
the daemon's lifecycle."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import attrs
import structlog
import trio

from meshactors.actors import ChildStartFailed
from meshactors.cli import service_cmd, settings
from meshactors.cli.common import (
    EXIT_CRASH_LOOP,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_STARTUP,
    EXIT_USAGE,
    FAILED_EVENT,
    CommandFailed,
    call_status,
    fail,
    fail_with,
    paths_of,
    prepared_paths,
    print_json,
    report,
    say,
)
from meshactors.cli.mesh import membership_note
from meshactors.client.errors import (
    ConnectFailed,
    ConnectionLost,
    DaemonBusy,
    DeadlineExceeded,
    SocketPathTooLong,
)
from meshactors.client.sync import SYNC_CONNECT_TIMEOUT, ClientError, DaemonNotRunning, SyncClient
from meshactors.control.supervisor import ActivationError, activated_socket
from meshactors.daemon.broker_actor import parse_listen
from meshactors.daemon.lock import AlreadyRunning, DaemonLock, SocketInUse, read_running_pid
from meshactors.daemon.main import DaemonGaveUp, DaemonOptions, serve
from meshactors.daemon.outbox import ACK_TIMEOUT_S, DurableSettings
from meshactors.daemon.sdnotify import Notifier, NotifyEnvError
from meshactors.hostguard import (
    HOST_MISMATCH_EXIT_CODE,
    HostCheck,
    HostGuardError,
    HostRecordUnreadable,
    HostRecordUnwritable,
    accept_host,
    check_host,
    mismatch_message,
    read_host_facts,
)
from meshactors.identity import Identity, IdentityError, load_or_create_identity
from meshactors.listen import ListenError
from meshactors.logs import configure_logging
from meshactors.network.link import ROLES
from meshactors.paths import NotRegularFile, Paths, RefusedFile, open_private, tighten_mode
from meshactors.stop_signals import ignore_from_now
from meshactors.store.db import StoreError
from meshactors.store.retention import RETENTION_DAYS, RETENTION_ROWS, Retention

DETACH_READY_TIMEOUT = 30.0  # seconds `up --detach` waits for the socket to answer
# errors whose message is the line to show
SAYS_IT_BEST = (StoreError, ListenError, RefusedFile, NotRegularFile)
DETACH_EXIT_TIMEOUT = 10.0  # seconds `up --detach` waits for a child that closed its pipe to exit
MAX_FAILURE_SCAN_BYTES = 1 << 20  # of the log a failed child wrote, searched for its reason
DOWN_TIMEOUT = 10.0  # seconds `down` waits for its answer, then the exit; after SIGTERM again
POLL_INTERVAL = 0.05  # seconds between checks while waiting for a daemon to exit
LOG_FILE = "daemon.log"  # a detached daemon's log, in the state directory

log = structlog.get_logger("meshactors.daemon")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `daemon` command group."""
    parser = commands.add_parser("daemon", help="start, stop and query the daemon")
    actions = parser.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start the daemon (foreground unless --detach)")
    up.add_argument("--detach", action="store_true", help="return once the socket answers")
    up.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")
    up.add_argument("--broker-listen", default=None, help="also run a broker on HOST:PORT")
    up.add_argument(
        "--tcp", type=int, default=None, metavar="PORT", help="also serve HTTP on 127.0.0.1:PORT"
    )
    up.add_argument("--log-level", default=None, choices=settings.LOG_LEVELS, help="default info")
    settings.config_option(up)
    up.add_argument(
        "--role",
        choices=ROLES,
        default=None,
        help="the role announced to peers, kept for later starts (first start: daemon)",
    )
    up.add_argument(
        "--retention-days",
        type=settings.flag_type(settings.RETENTION_DAYS_SETTING),
        default=None,
        metavar="DAYS",
        help=f"keep finished history this long (default {RETENTION_DAYS:g})",
    )
    up.add_argument(
        "--retention-rows",
        type=settings.flag_type(settings.RETENTION_ROWS_SETTING),
        default=None,
        metavar="N",
        help=f"keep at most N rows of each finished history (default {RETENTION_ROWS})",
    )
    up.add_argument(
        "--ack-timeout",
        type=settings.flag_type(settings.ACK_TIMEOUT_SETTING),
        default=None,
        metavar="SECONDS",
        help=f"wait this long for a peer's msg_ack before retrying (default {ACK_TIMEOUT_S:g})",
    )
    up.add_argument(
        "--debug-ops",
        action="store_true",
        help="also answer debug ops (debug_crash: crash any actor); for tests, never in production",
    )
    up.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    up.set_defaults(run=run_up)
    down = actions.add_parser("down", help="stop the daemon (SIGTERM if it does not answer)")
    down.set_defaults(run=run_down)
    status = actions.add_parser("status", help="show the daemon's status (exit 5: not running)")
    status.set_defaults(run=run_status)
    version = actions.add_parser("version", help="show the daemon's and the API's versions")
    version.set_defaults(run=run_version)
    accept = actions.add_parser("accept-host", help="trust this machine for the identity")
    accept.set_defaults(run=run_accept_host)
    service_cmd.register(actions)


def run_up(args: argparse.Namespace) -> int:
    paths = prepared_paths(args)
    try:
        effective = settings.effective(args, paths.config_file)
        broker_config = effective.broker_config()
    except settings.SettingsError as exc:
        fail(str(exc), EXIT_STARTUP, "bad_config")
    settings.apply_to_flags(args, effective)  # daemon.toml's values act as the flags would
    identity = _checked_identity(paths)
    try:
        broker_listen = None if args.broker_listen is None else parse_listen(args.broker_listen)
    except ValueError as exc:
        fail(f"--broker-listen: {exc}", EXIT_USAGE)
    durable = _durable_settings(args)
    if args.detach:
        return _detach(args, paths)
    configure_logging(json=True if args.log_json else None, level=args.log_level)
    options = _service_manager_options(
        DaemonOptions(
            paths=paths,
            identity=identity,
            ready=_ready_signal(args.ready_fd),
            tcp_port=args.tcp,
            broker_listen=broker_listen,
            broker_config=broker_config,
            role=args.role,
            durable=durable,
            debug_ops=args.debug_ops,
        )
    )
    try:
        lock = DaemonLock.acquire(
            options.paths.lock_files,
            options.paths.socket,
            keep_socket=options.listen_fd is not None,
        )
    except AlreadyRunning as exc:
        fail(f"{exc}", EXIT_FAILURE)
    except SocketInUse as exc:  # as a taken port is
        fail(str(exc), EXIT_STARTUP)
    except RefusedFile:
        raise  # told like every other file of the home (its own code)
    except OSError as exc:
        where = exc.filename or " and ".join(map(str, options.paths.lock_files))
        fail(f"cannot take the daemon lock {where}: {exc.strerror}", EXIT_STARTUP)
    ignore_from_now(options.stops)  # till serve's receiver takes them, and once it is done
    try:
        trio.run(serve, options)
    except* ChildStartFailed as group:
        cause = _root_cause(group)
        code = cause.code if isinstance(cause, RefusedFile) else None
        fail(f"the daemon could not start: {_said(cause)}", EXIT_STARTUP, code)
    except* DaemonGaveUp as group:
        fail(str(group.exceptions[0]), EXIT_CRASH_LOOP)  # logged already, with the details
    except* KeyboardInterrupt:
        pass
    finally:
        lock.release()
    return 0


def _service_manager_options(options: DaemonOptions) -> DaemonOptions:
    """`options` with what systemd passed: a notify socket and watchdog, an activated socket."""
    try:
        notifier = Notifier.from_env()
        activated = activated_socket()
    except (NotifyEnvError, ActivationError) as exc:  # its own code, as a bad daemon.toml has
        raise CommandFailed(exc.code, str(exc), EXIT_STARTUP, f"{exc.code}: {exc}") from None
    if activated is None:
        return attrs.evolve(options, notifier=notifier)
    fd, path = activated
    paths = attrs.evolve(options.paths, socket=path)
    return attrs.evolve(options, paths=paths, notifier=notifier, listen_fd=fd)


def _checked_identity(paths: Paths) -> Identity:
    """The identity, after the host guard agreed this machine may use it."""
    try:
        identity = load_or_create_identity(paths.identity_file)
        verdict = check_host(paths.host_file, read_host_facts())
    except (IdentityError, HostRecordUnreadable, HostRecordUnwritable) as exc:
        fail(str(exc), EXIT_STARTUP)
    except HostGuardError as exc:
        fail(str(exc), HOST_MISMATCH_EXIT_CODE)
    if verdict is HostCheck.MISMATCH:
        fail(mismatch_message(paths.host_file), HOST_MISMATCH_EXIT_CODE)
    return identity


def _root_cause(group: BaseExceptionGroup[ChildStartFailed]) -> BaseException:
    """Why the daemon could not start: an error made to be shown as it is (a taken port, a
    refused symlink, the database), else the deepest cause."""
    error: BaseException = group.exceptions[0]
    while not isinstance(error, SAYS_IT_BEST):
        inner = error.exceptions[0] if isinstance(error, BaseExceptionGroup) else error.__cause__
        if inner is None:
            return error
        error = inner
    return error


def _said(error: BaseException) -> str:
    """`error` as one line: as it is when made to be shown, else with its class."""
    return str(error) if isinstance(error, SAYS_IT_BEST) else f"{error.__class__.__name__}: {error}"


def _ready_signal(fd: int | None) -> Callable[[], None] | None:
    if fd is None:
        return None

    def ready() -> None:
        try:
            os.write(fd, b"ready\n")
        except BrokenPipeError:  # `up --detach` was interrupted: the daemon serves all the same
            log.warning("ready line unread: the `up --detach` that started the daemon is gone")
        finally:
            os.close(fd)

    return ready


def _durable_settings(args: argparse.Namespace) -> DurableSettings:
    """The durable-message settings the flags ask for (defaults for the rest; argparse and
    daemon.toml's parsers checked each)."""
    flags = {"retention_days": "days", "retention_rows": "rows", "ack_timeout": "ack_timeout_s"}
    given = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
    retention = {flags[f]: v for f, v in given.items() if f != "ack_timeout"}
    timeout = {flags[f]: v for f, v in given.items() if f == "ack_timeout"}
    return DurableSettings(retention=Retention(**retention), **timeout)


def _detach(args: argparse.Namespace, paths: Paths) -> int:
    """Start the daemon in a new session and wait until it says it serves."""
    running = _running(paths)
    if running is not None:
        fail(str(AlreadyRunning(*running)), EXIT_FAILURE)
    read_end, write_end = os.pipe()
    log_path = paths.state_dir / LOG_FILE
    command = [sys.executable, "-m", "meshactors"]
    if args.socket:
        command += ["--socket", args.socket]
    command += ["daemon", "up", "--log-json", "--ready-fd", str(write_end)]
    if args.broker_listen:
        command += ["--broker-listen", args.broker_listen]
    if args.tcp is not None:
        command += ["--tcp", str(args.tcp)]
    command += ["--log-level", args.log_level]  # daemon.toml's values came as flags
    if args.config is not None:  # the child reads it again (the flags above win)
        command += ["--config", str(args.config)]
    if args.role is not None:
        command += ["--role", args.role]
    if args.debug_ops:
        command += ["--debug-ops"]
    for flag in ("retention_days", "retention_rows", "ack_timeout"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    child: subprocess.Popen[bytes] | None = None
    stop = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop, as Ctrl-C is
    try:
        with _open_log(log_path) as out:
            tighten_mode(out.fileno(), log_path)
            started_at = out.seek(0, os.SEEK_END)
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(write_end,),
                start_new_session=True,
            )
        os.close(write_end)
        _wait_started(child, read_end, log_path, started_at)
    except KeyboardInterrupt:
        _interrupted(child, log_path)
    finally:
        signal.signal(signal.SIGTERM, stop)
    text = f"daemon running (pid {child.pid}), socket {paths.socket}, log {log_path}"
    return report(args, {"pid": child.pid, "socket": str(paths.socket), "log": str(log_path)}, text)


def _open_log(log_path: Path) -> BinaryIO:
    """The detached daemon's log, opened to append (0600); exit 3 naming it when it cannot be
    (a read-only or full home), as the daemon itself does for the files it cannot open."""
    try:
        return os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
    except (RefusedFile, NotRegularFile):
        raise  # told like every other file of the home
    except OSError as exc:
        fail(f"cannot open the daemon's log {log_path}: {exc.strerror or exc}", EXIT_STARTUP)


def _wait_started(
    child: subprocess.Popen[bytes], read_end: int, log_path: Path, started_at: int
) -> None:
    """Return once `child` says it serves; else end the command with why it does not."""
    ready = _wait_ready(read_end, DETACH_READY_TIMEOUT)
    if ready is None:
        child.terminate()
        fail(f"the daemon did not become ready in {DETACH_READY_TIMEOUT:g}s; see {log_path}")
    if not ready:  # it closed the pipe: it is exiting, so its status comes (no poll race)
        try:
            code = child.wait(DETACH_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.terminate()
            fail(f"the daemon stopped answering while starting; see {log_path}")
        reason = _failure_line(log_path, started_at) or f"the daemon exited with status {code}"
        fail(f"{reason} (see {log_path})", code or EXIT_STARTUP)


def _interrupted(child: subprocess.Popen[bytes] | None, log_path: Path) -> NoReturn:
    """End an `up --detach` that SIGINT or SIGTERM stopped waiting, in one line that says what
    became of the daemon: left running (it is in a session of its own), not stopped."""
    if child is None:
        fail("interrupted before the daemon was started", EXIT_INTERRUPTED)
    code = child.poll()
    if code is not None:
        fail(f"interrupted; the daemon exited with status {code}, see {log_path}", EXIT_INTERRUPTED)
    fail(
        f"interrupted: the daemon (pid {child.pid}) goes on starting in the background; "
        "`meshactors daemon status` says when it serves, `meshactors daemon down` stops it "
        f"(log {log_path})",
        EXIT_INTERRUPTED,
    )


def _wait_ready(fd: int, timeout: float) -> bool | None:
    """True once the child wrote its ready line, False on EOF (it is exiting), None on
    timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                return False
            data += chunk
    finally:
        os.close(fd)
    return data.startswith(b"ready")


def _failure_line(log_path: Path, offset: int) -> str | None:
    """The child's own reason (its last `command_failed` event), from the log it wrote since
    `offset`, or None when it logged none."""
    with os.fdopen(open_private(log_path, os.O_RDONLY), "rb") as log:
        log.seek(offset)
        written = log.read(MAX_FAILURE_SCAN_BYTES)
    said = None
    for line in written.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line cut short, or a traceback's
            continue
        if isinstance(event, dict) and event.get("event") == FAILED_EVENT:
            said = str(event.get("message"))
    return said


def run_down(args: argparse.Namespace) -> int:
    paths = paths_of(args)
    running = _running(paths)
    told = True
    try:
        with SyncClient.connect(paths.socket, timeout=DOWN_TIMEOUT) as client:
            client.call("shutdown")
    except (ClientError, OSError) as exc:
        if running is None and _nothing_listens(exc):
            return report(args, {"stopped": False}, "no daemon running")
        if running is None:
            _not_stopped(paths.socket, exc)
        if type(exc) is ClientError:  # its own error answer (failing to reach or hear it is
            # a subclass): it stays up, and says why; neither a wait nor a SIGTERM overrules it
            said = f"the daemon (pid {running[0]}) answered shutdown with {exc.code}: "
            fail_with(exc, said=f"{said}{exc.message}; it was not stopped")
        # not told: it serves another socket, or none yet; or it did not answer (stopped,
        # stuck), or took no connection (too busy: running, not "not running"), or the socket
        # could not be connected to (permission denied, ...)
        told = not isinstance(exc, DaemonNotRunning | DaemonBusy | DeadlineExceeded | ConnectFailed)
        if isinstance(exc, DeadlineExceeded | DaemonBusy | ConnectFailed):
            say(
                f"meshactors: the daemon (pid {running[0]}) {_not_told(exc)}: sending it SIGTERM",
                file=sys.stderr,
            )
    if running is not None and not (told and _wait_exit(paths, running[0], DOWN_TIMEOUT)):
        pid = running[0]
        with contextlib.suppress(ProcessLookupError):  # it exited since we read its pid
            os.kill(pid, signal.SIGTERM)
        if not _wait_exit(paths, pid, DOWN_TIMEOUT):
            fail(f"daemon (pid {pid}) did not stop after SIGTERM")
    return report(args, {"stopped": True}, "daemon stopped")


def _nothing_listens(exc: ClientError | OSError) -> bool:
    """Whether connecting found nothing on the socket: not a path no socket can have."""
    return isinstance(exc, DaemonNotRunning) and not isinstance(exc, SocketPathTooLong)


def _not_stopped(socket: Path, exc: ClientError | OSError) -> NoReturn:
    """End a `down` whose `shutdown` nothing carried out though `socket` was not free, or is a
    path no socket can have, while no lock file names a live daemon to SIGTERM: say why,
    never "no daemon running"."""
    if isinstance(exc, OSError):  # the request was never made (e.g. out of file descriptors)
        fail(f"cannot ask {socket} to shut down: {exc.strerror or exc}; no daemon was stopped")
    if isinstance(exc, SocketPathTooLong):  # its size and the limit, as every command says
        fail_with(exc)
    if isinstance(exc, ConnectFailed):
        fail_with(exc, said=f"{exc.message}; no pid file or state lock names a daemon to stop")
    if isinstance(exc, DeadlineExceeded | DaemonBusy):
        how = _not_told(exc)
    elif isinstance(exc, ConnectionLost):
        how = "closed the connection without answering shutdown"
    else:  # an error answer, or lines that are not frames
        how = f"answered shutdown with {exc.code}: {exc.message}"
    said = (
        f"something on {socket} {how}, and no pid file or state lock names a daemon: "
        "it was not stopped"
    )
    fail_with(exc, said=said)


def _not_told(exc: DeadlineExceeded | DaemonBusy | ConnectFailed) -> str:
    """What kept `down`'s `shutdown` from a daemon that runs: no answer in time, no room
    for the connection (its listen queue full for all of SYNC_CONNECT_TIMEOUT), or a socket
    that cannot be connected to."""
    if isinstance(exc, DaemonBusy):
        return f"took no connection within {SYNC_CONNECT_TIMEOUT:g} s ({exc.reason})"
    if isinstance(exc, ConnectFailed):
        return f"cannot be reached on {exc.path} ({exc.reason})"
    return f"did not answer shutdown within {DOWN_TIMEOUT:g} s"


def _wait_exit(paths: Paths, pid: int, timeout: float) -> bool:
    """Wait until daemon `pid` holds none of the lock files (a killed one drops them one by
    one), so a `daemon up` that follows finds both free; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while pid in map(_running_pid, paths.lock_files):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _running(paths: Paths) -> tuple[int, Path] | None:
    """The live daemon's pid and the lock file naming it: the pid file, else the state lock
    (a daemon of this identity serving another runtime directory); None when none runs."""
    for lock_file in paths.lock_files:
        pid = _running_pid(lock_file)
        if pid is not None:
            return pid, lock_file
    return None


def _running_pid(pid_file: Path) -> int | None:
    """`read_running_pid`, or exit 3 naming the pid file when it cannot be read (say, root's,
    left by a `sudo meshactors daemon up`): the daemon it names cannot be told apart."""
    try:
        return read_running_pid(pid_file)
    except (RefusedFile, NotRegularFile):
        raise  # told like every other file of the home
    except OSError as exc:
        fail(f"cannot read the daemon's pid file {pid_file}: {exc.strerror or exc}", EXIT_STARTUP)


def run_status(args: argparse.Namespace) -> int:
    status = call_status(args, "status")
    if args.json:
        print_json(status)
        return 0
    say(f"device_id  {status['device_id']}")
    say(f"label      {status['label'] or '-'}")
    say(f"role       {status['role']}")
    say(f"version    {status['version']}")
    say(f"uptime     {status['uptime_s']:.1f}s")
    say(f"socket     {status['socket']}")
    say(f"clients    {status['clients']}")
    networks = status.get("networks") or []
    say(f"networks   {', '.join(map(_network_state, networks)) or '-'}")
    return 0


def _network_state(network: dict[str, Any]) -> str:
    """A network as `status` lists it: its id and phase, and who evicted this device when or
    refused its invite why."""
    note = membership_note(network)
    return f"{network['id']} ({network['phase']}{'' if note is None else ', ' + note})"


def run_version(args: argparse.Namespace) -> int:
    version = call_status(args, "version")
    if args.json:
        print_json(version)
    else:
        say(f"daemon {version['version']}, IPC API {version['ipc_api']}")
        say(f"ops: {' '.join(version['ops'])}")
    return 0


def run_accept_host(args: argparse.Namespace) -> int:
    paths = prepared_paths(args)
    try:
        accept_host(paths.host_file, read_host_facts())
    except HostRecordUnwritable as exc:
        fail(str(exc), EXIT_STARTUP)
    text = f"this machine is now trusted for the identity in {paths.state_dir}"
    return report(args, {"accepted": True, "state_dir": str(paths.state_dir)}, text)
