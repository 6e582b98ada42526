"""The `meshactors` command line proper: the parser of every command group (one module each,
with `register`) and the run of one command; loaded by `meshactors.cli.main`."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Any, NoReturn

from meshactors._version import __version__
from meshactors.cli import (
    broker_cmd,
    channel_cmd,
    completion_cmd,
    config_cmd,
    daemon_cmd,
    identity_cmd,
    inspect_tree,
    members_cmd,
    mesh,
    message_cmd,
    rpc_cmd,
    state_cmd,
    stream_cmd,
)
from meshactors.cli.common import EXIT_STARTUP, EXIT_USAGE, CommandFailed, fail
from meshactors.logs import configure_logging
from meshactors.paths import NotRegularFile, RefusedFile

COMMAND_GROUPS = (
    daemon_cmd,
    config_cmd,
    identity_cmd,
    inspect_tree,
    mesh,
    members_cmd,
    broker_cmd,
    rpc_cmd,
    stream_cmd,
    channel_cmd,
    message_cmd,
    state_cmd,
    completion_cmd,
)


class Formatter(argparse.HelpFormatter):
    """argparse's help, except that a command's free words (`words`) show their metavar as it
    is: it spells their exact shape (`TO MESSAGE`), which argparse would repeat (`[TO MESSAGE
    ...]`) as if more were taken."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.dest == "words" and isinstance(action.metavar, str):
            return action.metavar
        return super()._format_args(action, default_metavar)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors end like every other failure (JSON under --json), with the
    help of `Formatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.removeprefix("meshactors").strip()  # e.g. "rpc call"
        raise CommandFailed("usage", f"{command}: {message}" if command else message, EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = Parser(prog="meshactors", description="A mesh daemon shared by local programs.")
    parser.add_argument("--version", action="version", version=f"meshactors {__version__}")
    parser.add_argument(
        "--socket", default=None, help="control socket path (default: MESHACTORS_SOCKET or home)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    for command in leaf_parsers(parser):
        if "--json" not in command._option_string_actions:
            command.add_argument("--json", action="store_true", help="JSON output and errors")
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser that runs a command (one with no sub-commands), each once."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [parser]
    found: dict[int, argparse.ArgumentParser] = {}
    for group in groups:
        for child in group.choices.values():
            for leaf in leaf_parsers(child):
                found[id(leaf)] = leaf  # an alias names the same parser again
    return list(found.values())


def parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """`parser.parse_args(words)`, except that a command's free words (`words`) may also follow
    its options (`channel send NET CH --retain PAYLOAD`), which argparse alone refuses; and
    `--flag=--` is refused, which argparse (3.11) would take as the value `[]`."""
    for word in itertools.takewhile(lambda word: word != "--", words):  # not a served CMD's
        flag, equals, value = word.partition("=")
        if _is_flag(flag) and equals and value == "--":
            parser.error(f"argument {flag}: expected one argument")
    args, extra = parser.parse_known_args(words)
    if extra and isinstance(getattr(args, "words", None), list) and not any(map(_is_flag, extra)):
        args.words += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _is_flag(word: str) -> bool:
    if not word.startswith("-"):
        return False
    try:
        float(word)  # a negative number is a value, as argparse itself takes it
    except ValueError:
        return True
    return False


def main(argv: list[str] | None = None) -> None:
    """Run the command `argv` (else the process's arguments) and exit with its status."""
    words = sys.argv[1:] if argv is None else argv
    args = None
    configure_logging(cache=False)  # on stderr, not mixed with the output; a command may refine it
    try:
        try:
            args = parse(build_parser(), words)
            status = args.run(args)
        except RefusedFile as exc:  # a file in the home: refused wherever it is met
            raise CommandFailed(exc.code, str(exc), EXIT_STARTUP) from None
        except NotRegularFile as exc:  # a FIFO or device in the home: likewise, exit 3
            fail(str(exc), EXIT_STARTUP)
        sys.stdout.flush()  # a closed pipe shows up here for output still buffered
    except CommandFailed as failed:
        if getattr(args, "ready_fd", None) is not None:  # `up --detach`'s child: its stderr is
            failed.log()  # daemon.log, JSON lines, which the parent reads its reason from
        else:
            failed.render(as_json=args.json if args is not None else "--json" in words)
        raise SystemExit(failed.code) from None
    except BrokenPipeError:
        _quiet_stdout()
        status = 0  # the reader (e.g. `| head`) has all it wanted: not an error
    raise SystemExit(status)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's own last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
