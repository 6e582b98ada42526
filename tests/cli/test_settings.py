"""daemon.toml: every key checked where it is read, one line naming the file and key for a bad
one, and the flags of `daemon up` winning over the file."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from meshactors.cli.settings import BY_KEY, SettingsError, effective, read_file

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "daemon.toml.example"
# a commented-out `# key = value` or `# [table]` line of the example, without its `# `
COMMENTED_SETTING = re.compile(r"^# ((?:\[\w+\]|\w+ = ).*)$", re.MULTILINE)

GOOD = """
broker_listen = "127.0.0.1:0"
tcp = 7448
role = "service"
log_level = "debug"
log_json = true
[broker]
max_peers = 3
"""


def flags(**given: object) -> argparse.Namespace:
    return argparse.Namespace(config=None, **given)


def test_values_come_from_the_file_unless_a_flag_is_given(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(GOOD)
    settings = effective(flags(tcp=9000, broker_listen=None, log_json=False), path)
    assert settings.values["tcp"] == 9000 and settings.sources["tcp"] == "flag --tcp"
    assert settings.values["role"] == "service" and settings.sources["role"] == f"file {path}"
    assert settings.values["log_json"] is True
    assert settings.broker_config().max_peers == 3
    assert settings.sources["broker.max_connections"] == "default"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tpc = 1", "unknown key 'tpc'"),
        ('tcp = "7448"', "tcp = '7448': expected a port number"),
        ("tcp = 70000", "expected a port number"),
        ('log_level = "loud"', "expected one of debug, info, warning, error"),
        ('broker_listen = "nowhere"', "HOST:PORT"),
        ("log_json = 1", "expected true or false"),
        ("[broker]\nmax_peers = 0", "broker.max_peers = 0"),
        ("[durable]\nretention_days = inf", "at most 36500"),  # int(inf) crashed the outbox
        ("[durable]\nack_timeout_s = nan", "greater than 0 and at most 86400"),
        ("[durable]\nretention_rows = 99999999999999999999", "from 1 to"),
        ("[broker]\nmax_sockets = 1", "unknown key 'broker.max_sockets'"),
        ("tcp = [", "not valid TOML"),
        ("tcp = " + "[" * 5000, "not valid TOML"),  # deeper than tomllib goes: RecursionError
        ("tcp = " + "{a=" * 5000, "not valid TOML"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as bad:
        read_file(path, follow=False)
    assert says in str(bad.value) and str(path) in str(bad.value)
    assert "\n" not in str(bad.value)


def test_the_home_file_is_optional_and_never_followed_through_a_symlink(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    assert read_file(path, follow=False) == {}
    with pytest.raises(SettingsError, match="no such file"):
        read_file(path, follow=True)  # named with --config: it must exist
    target = tmp_path / "elsewhere.toml"
    target.write_text("tcp = 1")
    path.symlink_to(target)
    with pytest.raises(SettingsError, match="symlink"):
        read_file(path, follow=False)


def test_the_file_is_read_with_its_mode_left_as_the_administrator_set_it(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(GOOD)
    path.chmod(0o644)  # a service's file is root's in /etc, which the daemon may not chmod
    assert read_file(path, follow=False)["tcp"] == 7448
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_example_file_sets_every_key_with_a_valid_value(tmp_path: Path) -> None:
    uncommented = tmp_path / "daemon.toml"
    lines = COMMENTED_SETTING.findall(EXAMPLE.read_text())
    uncommented.write_text("\n".join(lines) + "\n")

    assert set(read_file(uncommented, follow=True)) == set(BY_KEY)
