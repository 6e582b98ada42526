"""Shared CLI plumbing: resolving paths, reaching the daemon, printing, exiting."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from meshactors.client.sync import ClientError, DaemonNotRunning, SyncClient
from meshactors.paths import Paths, prepare_dirs, resolve_paths

EXIT_OK = 0
EXIT_FAILURE = 1  # not running, already running, an error answer
EXIT_USAGE = 2  # argparse's own
EXIT_STARTUP = 3  # the daemon could not start (identity, database, socket)


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
    """Exit 3 naming the state file or directory that could not be read or written."""
    fail(f"cannot prepare {exc.filename or paths.state_dir}: {exc.strerror or exc}", EXIT_STARTUP)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `message` to stderr and exit with `code`."""
    print(f"meshactors: {message}", file=sys.stderr)
    raise SystemExit(code)


def connect(args: argparse.Namespace) -> SyncClient:
    """A connection to the running daemon, or exit 1 saying none runs."""
    try:
        return SyncClient.connect(paths_of(args).socket)
    except DaemonNotRunning as exc:
        fail(f"{exc.message}; start one with `meshactors daemon up`")


def call(args: argparse.Namespace, op: str, **params: Any) -> Any:
    """Run one op on the daemon and return its data, or exit 1 with its error."""
    with connect(args) as client:
        try:
            return client.call(op, **params)
        except ClientError as exc:
            fail(f"{op} failed: {exc.code}: {exc.message}")


def print_json(value: Any) -> None:
    """Pretty JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True))


def parse_json_arg(text: str, what: str) -> Any:
    """A JSON command-line argument, or exit 2 saying which one is broken."""
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"{what} is not valid JSON: {exc}", EXIT_USAGE)
