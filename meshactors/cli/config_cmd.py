"""`meshactors config show`: the daemon's effective start-up settings and where each came from."""

from __future__ import annotations

import argparse

from meshactors.cli import settings
from meshactors.cli.common import EXIT_STARTUP, fail, paths_of, print_json, say


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `config show` command."""
    config = commands.add_parser("config", help="the daemon's configuration file")
    actions = config.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="effective settings and where each came from")
    settings.config_option(show)
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    path = args.config or paths_of(args).config_file
    try:
        effective = settings.effective(args, path)
        effective.broker_config()
    except settings.SettingsError as exc:
        fail(str(exc), EXIT_STARTUP, "bad_config")
    if args.json:
        values = effective.values.items()
        shown = {k: {"value": v, "source": effective.sources[k]} for k, v in values}
        print_json({"file": str(path), "settings": shown})
        return 0
    say(f"# {path}{'' if path.exists() else ' (absent: defaults only)'}")
    width = max(map(len, effective.values))
    for key, value in effective.values.items():
        say(f"{key.ljust(width)}  {_toml(value):<24}  {effective.sources[key]}")
    return 0


def _toml(value: object) -> str:
    """A value as daemon.toml spells it ("-" for unset)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else str(value)
