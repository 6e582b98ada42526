"""`meshactors identity show|set-label`: this machine's device identity."""

from __future__ import annotations

import argparse

from meshactors.cli.common import (
    EXIT_STARTUP,
    EXIT_USAGE,
    fail,
    fail_on_state,
    prepared_paths,
    print_json,
    report,
    say,
)
from meshactors.identity import (
    LABEL_MAX_CHARS,
    IdentityError,
    load_or_create_identity,
    set_identity_label,
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `identity` command group."""
    parser = commands.add_parser("identity", help="show or label this device's identity")
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="print the device id and label")
    show.set_defaults(run=run_show)
    label = actions.add_parser("set-label", help="set (or with no LABEL, clear) the label")
    label.add_argument(
        "label",
        nargs="?",
        default=None,
        help=f"1-{LABEL_MAX_CHARS} printable characters peers see (a running daemon: after a "
        "restart)",
    )
    label.set_defaults(run=run_set_label)


def run_show(args: argparse.Namespace) -> int:
    paths = prepared_paths(args)
    try:
        identity = load_or_create_identity(paths.identity_file)
    except IdentityError as exc:
        fail(str(exc), EXIT_STARTUP)
    except OSError as exc:
        fail_on_state(exc, paths)
    if args.json:
        print_json({"device_id": identity.device_id, "label": identity.label})
    else:
        say(f"device_id  {identity.device_id}")
        say(f"label      {identity.label or '-'}")
    return 0


def run_set_label(args: argparse.Namespace) -> int:
    if args.label == "":  # the library says how to clear it in Python; say it as a command
        fail("label must not be empty (omit LABEL to clear it)", EXIT_USAGE, "invalid_label")
    paths = prepared_paths(args)
    try:
        identity = set_identity_label(paths.identity_file, args.label)
    except IdentityError as exc:  # the file, not the label: as `identity show` says it
        fail(str(exc), EXIT_STARTUP)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE, "invalid_label")
    except OSError as exc:
        fail_on_state(exc, paths)
    done = "cleared" if identity.label is None else f"set to {identity.label}"
    text = f"label {done}; a running daemon uses it after a restart"
    return report(args, {"device_id": identity.device_id, "label": identity.label}, text)
