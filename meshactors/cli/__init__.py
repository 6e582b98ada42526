"""The `meshactors` command line: one module per command group, each with `register`."""

from __future__ import annotations

import argparse
import sys

from meshactors._version import __version__
from meshactors.cli import (
    broker_cmd,
    channel_cmd,
    daemon_cmd,
    identity_cmd,
    inspect_tree,
    mesh,
    message_cmd,
    rpc_cmd,
)

COMMAND_GROUPS = (
    daemon_cmd,
    identity_cmd,
    inspect_tree,
    mesh,
    broker_cmd,
    rpc_cmd,
    channel_cmd,
    message_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="meshactors", description="A mesh daemon shared by local programs."
    )
    parser.add_argument("--version", action="version", version=f"meshactors {__version__}")
    parser.add_argument(
        "--socket", default=None, help="control socket path (default: MESHACTORS_SOCKET or home)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `meshactors` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    raise SystemExit(args.run(args))
