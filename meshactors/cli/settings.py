"""`daemon.toml`: the daemon's start-up settings, read from the config directory (or
`--config PATH`), each overridden by its `daemon up` flag; one table says which key is which flag.
Its checks of a number also make the argparse types of every command's flags in seconds.
"""

from __future__ import annotations

import argparse
import errno
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from meshactors.broker.limits import BrokerConfig
from meshactors.daemon.broker_actor import parse_listen
from meshactors.daemon.outbox import ACK_TIMEOUT_S, MAX_ACK_TIMEOUT_S
from meshactors.network.link import ROLES
from meshactors.network.rpc import DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS
from meshactors.paths import ROOT_UID, NotRegularFile, open_regular
from meshactors.store.retention import (
    MAX_RETENTION_DAYS,
    MAX_RETENTION_ROWS,
    RETENTION_DAYS,
    RETENTION_ROWS,
)

MAX_CONFIG_BYTES = 64 * 1024  # a larger daemon.toml is refused unread
LOG_LEVELS = ("debug", "info", "warning", "error")

Source = str  # "default", "file PATH" or "flag --NAME"


class SettingsError(Exception):
    """daemon.toml cannot be read, or holds an unknown key or a bad value; one line says which."""


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string HOST:PORT")
    parse_listen(value)
    return value


def _port(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= 65535:
        raise ValueError("expected a port number 0-65535")
    return value


def _role(value: Any) -> str:
    if value not in ROLES:
        raise ValueError(f"expected one of {', '.join(ROLES)}")
    return str(value)


def _log_level(value: Any) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return str(value)


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("expected true or false")
    return value


def _number_up_to(upper: float, *, least: float | None = None) -> Callable[[Any], float]:
    """A parser of a number greater than 0 (or at least `least`) and at most `upper` (so
    never inf or nan, which the durable settings would turn into integers and crash on)."""
    expected = (
        f"greater than 0 and at most {upper:g}" if least is None else f"from {least:g} to {upper:g}"
    )

    def parse(value: Any) -> float:
        number = type(value) in (int, float)
        if not number or not (value > 0 if least is None else value >= least) or value > upper:
            raise ValueError(f"expected a number {expected}")
        return float(value)

    return parse


def _whole_up_to(upper: int) -> Callable[[Any], int]:
    """A parser of a whole number from 1 to `upper` (SQLite compares it as a 64-bit integer)."""

    def parse(value: Any) -> int:
        if type(value) is not int or not 0 < value <= upper:
            raise ValueError(f"expected a whole number from 1 to {upper}")
        return value

    return parse


def flag_type(parse: Callable[[Any], float]) -> Callable[[str], float]:
    """An argparse `type` that checks a flag's text as `parse` checks daemon.toml's value."""

    def from_text(text: str) -> float:
        try:
            number = int(text) if text.lstrip("-").isdigit() else float(text)
            return parse(number)
        except ValueError as bad:
            raise argparse.ArgumentTypeError(str(bad)) from None

    return from_text


def seconds_flag(upper: float) -> Callable[[str], float]:
    """An argparse `type` of a flag in seconds, greater than 0 and at most `upper`: nan, inf
    or a negative is a usage error, as in daemon.toml."""
    return flag_type(_number_up_to(upper))


def milliseconds_flag(max_ms: int) -> Callable[[str], int]:
    """An argparse `type` of a flag in seconds that the daemon takes in whole ms: the ms, from
    1 to `max_ms` (less than 1 ms is a usage error, never rounded up to 1 ms)."""
    seconds = flag_type(_number_up_to(max_ms / 1000, least=0.001))

    def from_text(text: str) -> int:
        return round(seconds(text) * 1000)

    return from_text


def add_milliseconds_flag(
    parser: argparse.ArgumentParser, name: str, *, max_ms: int, default_s: float, help: str
) -> None:
    """`NAME SECONDS` into `args.<name>_ms`: a span the daemon takes in whole ms (see
    `milliseconds_flag`); None when not given, so the default its help names applies."""
    parser.add_argument(
        name,
        type=milliseconds_flag(max_ms),
        default=None,
        dest=f"{name.removeprefix('--').replace('-', '_')}_ms",
        metavar="SECONDS",
        help=f"{help} (default {default_s:g}, at most {max_ms / 1000:g})",
    )


def add_timeout_flag(parser: argparse.ArgumentParser, *, help: str) -> None:
    """`--timeout SECONDS` (into `args.timeout_ms`) of an op the daemon bounds by a call's
    deadline (`check_timeout`): one flag alike for every such command."""
    add_milliseconds_flag(
        parser,
        "--timeout",
        max_ms=MAX_TIMEOUT_MS,
        default_s=DEFAULT_TIMEOUT_MS / 1000,
        help=help,
    )


RETENTION_DAYS_SETTING = _number_up_to(MAX_RETENTION_DAYS)
RETENTION_ROWS_SETTING = _whole_up_to(MAX_RETENTION_ROWS)
ACK_TIMEOUT_SETTING = _number_up_to(MAX_ACK_TIMEOUT_S)


def _positive(value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


@attrs.frozen
class Setting:
    """One key of daemon.toml: how its value is checked, and the `daemon up` flag (argparse
    dest) that overrides it, if any."""

    key: str  # "tcp", or "table.key"
    check: Callable[[Any], Any]
    default: Any
    flag: str | None = None  # the argparse dest of `daemon up`'s flag


SETTINGS = (
    Setting("broker_listen", _listen, None, "broker_listen"),
    Setting("tcp", _port, None, "tcp"),
    Setting("role", _role, None, "role"),
    Setting("log_level", _log_level, "info", "log_level"),
    Setting("log_json", _flag, False, "log_json"),
    Setting("debug_ops", _flag, False, "debug_ops"),
    Setting("durable.retention_days", RETENTION_DAYS_SETTING, RETENTION_DAYS, "retention_days"),
    Setting("durable.retention_rows", RETENTION_ROWS_SETTING, RETENTION_ROWS, "retention_rows"),
    Setting("durable.ack_timeout_s", ACK_TIMEOUT_SETTING, ACK_TIMEOUT_S, "ack_timeout"),
    Setting("broker.max_peers", _positive, BrokerConfig().max_peers),
    Setting("broker.max_message_bytes", _positive, BrokerConfig().max_message_bytes),
    Setting("broker.max_connections", _positive, BrokerConfig().max_connections),
    Setting(
        "broker.max_unhelloed_per_address",
        _positive,
        BrokerConfig().max_unhelloed_per_address,
    ),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}


@attrs.frozen
class Effective:
    """The value of every setting and where it came from."""

    values: dict[str, Any]
    sources: dict[str, Source]

    def broker_config(self) -> BrokerConfig:
        """The embedded broker's limits."""
        prefix = "broker."
        limits = {k.removeprefix(prefix): v for k, v in self.values.items() if k.startswith(prefix)}
        try:
            return BrokerConfig(**limits)
        except ValueError as exc:
            raise SettingsError(f"[broker]: {exc}") from None


def read_file(path: Path, *, follow: bool) -> dict[str, Any]:
    """The checked values `path` sets ({} if there is no such file and it was not named);
    `follow=False` (the file in the home) refuses a symlink, and a file neither we nor root
    own (another user could have planted it while the directory was open to them)."""
    owners = () if follow else (os.geteuid(), ROOT_UID)
    try:
        fd = open_regular(path, os.O_RDONLY | (0 if follow else os.O_NOFOLLOW), owners=owners)
    except FileNotFoundError:
        if follow:
            raise SettingsError(f"{path}: no such file") from None
        return {}
    except NotRegularFile:
        raise SettingsError(f"{path}: not a regular file") from None
    except OSError as exc:
        reason = "a symlink, not followed" if exc.errno == errno.ELOOP else exc.strerror
        raise SettingsError(f"{path}: {reason}") from None
    with os.fdopen(fd, "rb") as file:
        raw = file.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise SettingsError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise SettingsError(f"{path}: not valid TOML: nested too deeply to parse") from None
    return check_document(document, path)


def check_document(document: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The values of a parsed daemon.toml by dotted key; SettingsError names the first bad one."""
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            flat[name] = value
    checked = {}
    for key, value in flat.items():
        setting = BY_KEY.get(key)
        if setting is None:
            known = ", ".join(BY_KEY)
            raise SettingsError(f"{path}: unknown key {key!r} (known keys: {known})")
        try:
            checked[key] = setting.check(value)
        except ValueError as exc:
            raise SettingsError(f"{path}: {key} = {value!r}: {exc}") from None
    return checked


def config_option(parser: argparse.ArgumentParser) -> None:
    """`--config PATH`: daemon.toml somewhere else than the config directory."""
    parser.add_argument(
        "--config", type=Path, default=None, help="daemon.toml to read (default: config dir)"
    )


def effective(args: argparse.Namespace, default_path: Path) -> Effective:
    """Defaults, then the file (`--config`, else `default_path` if it exists), then the flags
    `args` carries that were given."""
    named = args.config is not None
    path = args.config if named else default_path
    from_file = read_file(path, follow=named)
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for setting in SETTINGS:
        flag = None if setting.flag is None else getattr(args, setting.flag, None)
        if flag is not None and flag is not False:  # 0 is a given value; False an unset switch
            values[setting.key] = flag
            sources[setting.key] = f"flag --{str(setting.flag).replace('_', '-')}"
        elif setting.key in from_file:
            values[setting.key], sources[setting.key] = from_file[setting.key], f"file {path}"
        else:
            values[setting.key], sources[setting.key] = setting.default, "default"
    return Effective(values, sources)


def apply_to_flags(args: argparse.Namespace, settings: Effective) -> None:
    """Set each `daemon up` flag to its effective value, so the file acts as the flag would."""
    for setting in SETTINGS:
        if setting.flag is not None:
            setattr(args, setting.flag, settings.values[setting.key])
