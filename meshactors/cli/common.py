"""Shared CLI plumbing: resolving paths, reaching the daemon, printing, exiting."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from collections.abc import Mapping
from typing import Any, NoReturn, TextIO

import structlog

from meshactors.client.errors import ConnectFailed, DaemonBusy, DeadlineExceeded
from meshactors.client.mesh import DEFAULT_CALL_TIMEOUT
from meshactors.client.sync import ClientError, DaemonNotRunning, SyncClient
from meshactors.hostguard import HOST_MISMATCH_EXIT_CODE
from meshactors.identity import LABEL_MAX_CHARS
from meshactors.logs import SYSLOG_PRIORITIES, is_journal_stream
from meshactors.paths import Paths, RefusedFile, prepare_dirs, resolve_paths
from meshactors.wire.device_id import SHORT_ID as SHORT_ID  # tables show it (--json: full ids)
from meshactors.wire.ipc import DEFAULT_PAGE, MAX_PAGE

# The exit codes of every command (docs/operations.md, "Exit codes", is the same table).
EXIT_OK = 0
EXIT_FAILURE = 1  # an error of no class below (e.g. remote_error), or already running
EXIT_USAGE = 2  # bad arguments: argparse's own, a bad JSON argument, an ambiguous device
EXIT_STARTUP = 3  # the daemon could not start (identity, database, socket, daemon.toml)
EXIT_HOST = HOST_MISMATCH_EXIT_CODE  # 4: the host guard refused this machine
EXIT_NOT_RUNNING = 5  # no daemon answers on the socket
EXIT_NOT_FOUND = 6  # no such network, peer, method, request or row
EXIT_REFUSED = 7  # the daemon refused it in its current state
EXIT_TIMEOUT = 8  # no answer before the deadline
EXIT_CRASH_LOOP = 9  # `daemon up`: the root supervisor passed its restart intensity; restart it
STATUS_TIMEOUT = 10.0  # seconds `daemon status`, `daemon version` and `inspect` wait for the
# answer, which a daemon gives at once: one that is stopped (SIGSTOP) or stuck is said so (exit 8)
EXIT_INTERRUPTED = 130  # SIGINT (128 + SIGINT) ended `rpc call` or `stream send` before its
# answer's (stream's) end, or `daemon up --detach`'s wait (SIGTERM too)

# what a failure to reach a daemon too busy to take a connection (DaemonBusy) adds: it runs
BUSY_HINT = "it is running but takes no new connection now; try again once it has caught up"
FAILED_EVENT = "command_failed"  # the event a failure is logged as where stderr is a JSON log
ERROR_CODE_BY_EXIT = {  # the `code` of a failure the CLI itself detects, by its exit code
    EXIT_FAILURE: "failed",
    EXIT_USAGE: "usage",
    EXIT_STARTUP: "startup",
    EXIT_HOST: "host_mismatch",
    EXIT_NOT_RUNNING: "not_running",
    EXIT_NOT_FOUND: "not_found",
    EXIT_REFUSED: "refused",
    EXIT_TIMEOUT: "timeout",
    EXIT_CRASH_LOOP: "crash_loop",
    EXIT_INTERRUPTED: "interrupted",
}

EXIT_BY_ERROR_CODE = {  # a daemon's (or the client library's) error code -> exit code
    "bad_json": EXIT_USAGE,
    "bad_request": EXIT_USAGE,
    "invalid_params": EXIT_USAGE,
    "payload_too_large": EXIT_USAGE,
    "frame_too_large": EXIT_USAGE,
    "not_running": EXIT_NOT_RUNNING,
    "connection_lost": EXIT_NOT_RUNNING,
    "unknown_op": EXIT_NOT_FOUND,
    "not_found": EXIT_NOT_FOUND,
    "no_such_network": EXIT_NOT_FOUND,
    "no_such_peer": EXIT_NOT_FOUND,
    "no_handler": EXIT_NOT_FOUND,
    "unknown_request": EXIT_NOT_FOUND,
    "no_recipients": EXIT_NOT_FOUND,
    "conflict": EXIT_REFUSED,
    "unavailable": EXIT_REFUSED,
    "too_many_requests": EXIT_REFUSED,
    "peer_not_active": EXIT_REFUSED,
    "link_down": EXIT_REFUSED,
    "not_requeueable": EXIT_REFUSED,
    "storage": EXIT_REFUSED,
    "state_full": EXIT_REFUSED,
    "forbidden": EXIT_REFUSED,
    "invite_refused": EXIT_REFUSED,
    "timeout": EXIT_TIMEOUT,
    "deadline": EXIT_TIMEOUT,
}


class CommandFailed(SystemExit):
    """A command's failure: its exit status, a stable `code`, a one-line message and the
    details a daemon's error carried besides them; `main` prints it (as `{"error": …}` on
    stdout under --json, the whole error object, else the line on stderr)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        line: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status)
        self.error_code = code
        self.message = message
        self.line = message if line is None else line  # what stderr says, when not --json
        self.details = dict(details or {})  # e.g. a send conflict's reason, id, fingerprint

    def render(self, *, as_json: bool) -> None:
        """Print the failure where the caller's output mode says."""
        if as_json:
            error = {"code": self.error_code, "message": self.message, **self.details}
            print(json.dumps({"error": error}))
        else:  # under journald with its priority, as log lines have: `journalctl -p err` finds it
            journal = is_journal_stream(sys.stderr, os.environ)
            priority = f"<{SYSLOG_PRIORITIES['error']}>" if journal else ""
            print(f"{priority}meshactors: {one_line(self.line)}", file=sys.stderr)

    def log(self) -> None:
        """Log the failure as an error event (`command_failed`), for a command whose stderr is
        a JSON log (a detached daemon's daemon.log), where a plain line would be the odd one."""
        error = {"code": self.error_code, "message": self.message, **self.details}
        structlog.get_logger("meshactors.cli").error(FAILED_EVENT, **error)


def one_line(text: str) -> str:
    """`text` on one line: its non-blank lines joined by " | " (a remote stderr has several),
    made `printable`."""
    return " | ".join(printable(line.strip()) for line in text.splitlines() if line.strip())


def printable(text: str) -> str:
    """`text` with each character str.isprintable refuses (C0 and C1 controls, DEL, line
    breaks, format and unassigned code points) written as a Python escape (\\x1b, \\u2028): a
    peer's or broker's words in a table cell, a tree or an error line cannot move the cursor,
    clear or retitle the operator's terminal, or start a line of their own."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def say(text: str = "", *, file: TextIO | None = None, flush: bool = False) -> None:
    """Print a line (or lines) of the CLI's text output: `printable` but for the line breaks
    and tabs that lay it out. The CLI's text lines go through here (an error line through
    `one_line`); --json output through neither: JSON escapes what it holds."""
    shown = "\n".join("\t".join(map(printable, line.split("\t"))) for line in text.split("\n"))
    print(shown, file=file, flush=flush)


def local_time(ms: int) -> str:
    """Milliseconds since the epoch as this machine's local date and time; the raw figure when
    no date can show it (a peer's fact may carry any time up to 2**53 ms, past year 9999)."""
    try:
        return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms since the epoch"


def paths_of(args: argparse.Namespace) -> Paths:
    """Paths from the environment and the global `--socket` flag."""
    return resolve_paths(socket_override=args.socket)


def prepared_paths(args: argparse.Namespace) -> Paths:
    """`paths_of(args)` with its directories created, for commands that write state themselves;
    exits 3 with the reason when they cannot be (e.g. a read-only file system)."""
    paths = paths_of(args)
    try:
        prepare_dirs(paths)
    except OSError as exc:
        fail_on_state(exc, paths)
    return paths


def fail_on_state(exc: OSError, paths: Paths) -> NoReturn:
    """Exit 3 naming the state file or directory that could not be read or written; a file
    refused as a symlink or another user's is told in its own words (see `main`)."""
    if isinstance(exc, RefusedFile):
        raise exc
    fail(f"cannot prepare {exc.filename or paths.state_dir}: {exc.strerror or exc}", EXIT_STARTUP)


def fail(message: str, status: int = EXIT_FAILURE, code: str | None = None) -> NoReturn:
    """End the command with `message` and exit status `status` (`code`: the error's name)."""
    raise CommandFailed(code or ERROR_CODE_BY_EXIT.get(status, "failed"), message, status)


def interrupted(what: str) -> NoReturn:
    """End a command that Ctrl-C stopped before its end with exit 130, saying `what` became of
    it: a caller that gave up has no (whole) answer, so a script must not take it for one."""
    fail(f"interrupted: {what}", EXIT_INTERRUPTED)


def fail_with(exc: ClientError, context: str = "", said: str | None = None) -> NoReturn:
    """End the command with a daemon's (or the client's) error: its exit code from its code,
    its details kept for --json; `said` (else `context` before it) is what the line says."""
    if said is not None:
        message = line = said
    elif isinstance(exc, DaemonNotRunning):
        message = line = f"{exc.message}; {exc.hint}"
    elif isinstance(exc, DaemonBusy):
        message = line = f"daemon busy: {exc.message}; {BUSY_HINT}"
    else:
        message, line = exc.message, f"{context}{exc.code}: {exc.message}"
    status = EXIT_BY_ERROR_CODE.get(exc.code, EXIT_FAILURE)
    raise CommandFailed(exc.code, message, status, line, exc.details)


def connect(args: argparse.Namespace, timeout: float = DEFAULT_CALL_TIMEOUT) -> SyncClient:
    """A connection to the running daemon (each call waiting `timeout` seconds at most), or
    exit 5 saying none runs, or exit 7 saying it is too busy to take one (`SyncClient.connect`
    retried it for SYNC_CONNECT_TIMEOUT), or exit 1 saying the socket cannot be connected to."""
    try:
        return SyncClient.connect(paths_of(args).socket, timeout)
    except (DaemonNotRunning, DaemonBusy, ConnectFailed) as exc:
        fail_with(exc)


def call(args: argparse.Namespace, op: str, **params: Any) -> Any:
    """Run one op on the daemon and return its data, or exit with its error."""
    return _call(args, op, params)


def call_status(args: argparse.Namespace, op: str) -> Any:
    """`call` for an op the daemon answers at once (`status`, `version`, `inspect`): with no
    answer within STATUS_TIMEOUT, exit 8 saying the daemon is not answering."""
    silent = (
        f"the daemon is not answering: no answer to {op} within {STATUS_TIMEOUT:g} s "
        "(stopped, or stuck)"
    )
    return _call(args, op, {}, STATUS_TIMEOUT, silent)


def _call(
    args: argparse.Namespace,
    op: str,
    params: dict[str, Any],
    timeout: float = DEFAULT_CALL_TIMEOUT,
    silent: str | None = None,
) -> Any:
    """Run one op on the daemon, waiting `timeout` seconds at most, and return its data, or
    exit with its error; given `silent`, no answer in time exits 8 saying that instead."""
    with connect(args, timeout) as client:
        try:
            return client.call(op, **params)
        except ClientError as exc:
            if silent is not None and isinstance(exc, DeadlineExceeded):
                fail(silent, EXIT_TIMEOUT)
            fail_with(exc, f"{op} failed: ")


def membership_of(network: dict[str, Any]) -> dict[str, Any]:
    """The membership summary of `network` (as status and networks_list show it): `closed`,
    and for a closed one who evicted this device or refused its invite; {} when absent."""
    membership: dict[str, Any] = network.get("membership") or {}
    return membership


def eviction(network: dict[str, Any]) -> dict[str, Any] | None:
    """Who evicted this device from `network` (a network as status and networks_list show it)
    and when; None while it is not evicted."""
    evicted: dict[str, Any] | None = membership_of(network).get("evicted")
    return evicted


def told_lagged(event: dict[str, Any], what: str) -> bool:
    """Whether `event` is a `lagged` notice; if so, say on stderr how many `what` the daemon
    skipped, so a follower whose output is read too slowly never misses them in silence."""
    if event.get("kind") != "lagged":
        return False
    say(f"meshactors: missed {event.get('skipped')} {what}", file=sys.stderr)
    return True


def print_json(value: Any) -> None:
    """Pretty JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True))


def report(args: argparse.Namespace, data: Any, text: str) -> int:
    """A command's result: `data` as JSON under --json, else the line `text`; exit 0."""
    if getattr(args, "json", False):
        print_json(data)
    else:
        say(text)
    return EXIT_OK


def parse_json_arg(text: str, what: str) -> Any:
    """A JSON command-line argument, or exit 2 saying which one is broken and, since a bare
    word (`hi`) is the usual slip, how it is written as a JSON string."""
    try:
        return json.loads(text)
    except ValueError as exc:
        quoted = shlex.quote(json.dumps(text, ensure_ascii=False))
        fail(
            f"{what} is not valid JSON: {exc}; a string must be quoted as JSON: {quoted}",
            EXIT_USAGE,
        )
    except RecursionError:
        fail(f"{what} is not valid JSON: nested too deeply to parse", EXIT_USAGE)


# what a command that takes its network as its first word (`state get NET KEY`) says of it
NETWORK_WORD = "NETWORK: as -n/--network (default: the only joined one)"


def network_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """The `-n/--network` option every command working on one network takes."""
    parser.add_argument(
        "-n", "--network", default=None, help=help or "network id (default: the only joined one)"
    )


def network_id_argument(parser: argparse.ArgumentParser) -> None:
    """The network `id` that `network add|update|remove|create|import` take first."""
    parser.add_argument("id", help="network id: 1-64 characters of A-Za-z0-9._-")


def label_option(parser: argparse.ArgumentParser, what: str, unset: str = "none") -> None:
    """`--label`: the name lists show for `what` (a network, a device), `unset` when not given."""
    text = f"{what}'s name in lists: 1-{LABEL_MAX_CHARS} printable characters (default: {unset})"
    parser.add_argument("--label", default=None, help=text)


def limit_option(parser: argparse.ArgumentParser, rows: str) -> None:
    """`--limit N`: one page of a listing op, by default the ops' own `DEFAULT_PAGE`; one past
    `MAX_PAGE` (the ops' bound) is left to the daemon's `invalid_params` (exit 2)."""
    text = f"{rows} per page (1-{MAX_PAGE}, default %(default)s)"
    parser.add_argument("--limit", type=int, default=DEFAULT_PAGE, help=text)


def joined_networks(args: argparse.Namespace) -> list[str]:
    """The ids of the networks the daemon has joined."""
    return [str(n["id"]) for n in call(args, "networks_list")["networks"]]


def network_of(args: argparse.Namespace) -> str:
    """The --network given, or the only joined network (exit 2 listing them if several)."""
    if args.network is not None:
        return str(args.network)
    joined = joined_networks(args)
    if len(joined) != 1:
        fail(
            f"say which network with -n/--network (joined: {', '.join(joined) or 'none'})",
            EXIT_USAGE,
        )
    return joined[0]


def words_after_network(args: argparse.Namespace, words: list[str], arity: int) -> list[str]:
    """The `arity` words of a command after its network, which is taken from the first word
    when there is one word more, else from -n (or the only joined network); sets
    `args.network`."""
    if len(words) == arity + 1 and args.network is None:
        args.network, words = words[0], words[1:]
    if len(words) != arity:
        fail(f"give {arity} word(s) after the network, got {len(words)}", EXIT_USAGE)
    args.network = network_of(args)
    return words


def legacy_network(args: argparse.Namespace, words: list[str], old: str, new: str) -> list[str]:
    """`words` without a leading network id given in the old positional form (deprecated for
    one release: a note on stderr says the new form); sets `args.network` from it."""
    if args.network is not None:
        what = f"give the network once: either -n/--network or as the first word of {old}"
        fail(what, EXIT_USAGE)
    args.network = words[0]
    say(f"meshactors: `{old}` is deprecated; use `{new}`", file=sys.stderr)
    return words[1:]


def free_words(args: argparse.Namespace, command: str, shape: str, hint: str) -> list[str]:
    """`args.words` as the words of `shape` (e.g. "PEER METHOD [PAYLOAD]", a bracketed one may
    be left out), after taking a leading network of the old positional form of `command`: only
    a word naming a joined network is one, so a word too many is a usage error naming it and
    saying `hint`."""
    words: list[str] = args.words
    most = len(shape.split())
    fewest = sum(not word.startswith("[") for word in shape.split())
    maybe_old = len(words) == most + 1 or (fewest < len(words) <= most and args.network is None)
    if maybe_old and words[0] in joined_networks(args):
        old, new = f"{command} NET {shape}", f"{command} -n NET {shape}"
        words = legacy_network(args, words, old, new)
    if len(words) > most:
        extra = " ".join(repr(word) for word in words[most:])
        fail(f"too many arguments: {extra} ({hint})", EXIT_USAGE)
    if len(words) < fewest:
        fail(f"give {shape} (and -n NET unless one network is joined)", EXIT_USAGE)
    return words
