"""One CLI grammar against a real daemon: `-n/--network` (or the only joined network, or the
old positional form with a deprecation note), `--json` answers and errors, one exit code per
kind of failure, and device ids given as a prefix or a label."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from meshactors.cli.common import EXIT_NOT_FOUND, EXIT_NOT_RUNNING, EXIT_USAGE
from meshactors.wire.device_id import device_id_from_public_key
from tests.support import Home

pytestmark = pytest.mark.e2e

BROKER = "ws://127.0.0.1:9/v1"  # never answers: the network stays joined, no peer is seen


def new_device() -> str:
    return device_id_from_public_key(bytes(nacl.signing.SigningKey.generate().verify_key))


@pytest.fixture
def lan(home: Home) -> Iterator[Home]:
    """A running daemon in `home` joined to one network, `lan`."""
    home.cli("daemon", "up", "--detach")
    home.cli("network", "add", "lan", "--broker", BROKER)
    yield home


def error_of(result: object) -> dict[str, str]:
    stdout = getattr(result, "stdout")  # noqa: B009 - a CompletedProcess
    error: dict[str, str] = json.loads(stdout)["error"]
    return error


def test_a_failure_has_its_own_exit_code_and_is_json_under_json(home: Home) -> None:
    plain = home.cli("peers", check=False)
    assert plain.returncode == EXIT_NOT_RUNNING
    assert plain.stdout == "" and plain.stderr.startswith("meshactors: no daemon answers")
    as_json = home.cli("peers", "--json", check=False)
    assert as_json.returncode == EXIT_NOT_RUNNING
    assert error_of(as_json)["code"] == "not_running"
    usage = home.cli("peers", "--bogus", "--json", check=False)
    assert usage.returncode == EXIT_USAGE
    assert error_of(usage)["code"] == "usage"


def test_a_socket_path_too_long_is_a_not_running_failure_naming_it(tmp_path: Path) -> None:
    home = Home(tmp_path / ("h" * 120))
    home.path.mkdir()

    plain = home.cli("peers", check=False)
    as_json = home.cli("peers", "--json", check=False)

    size = len(os.fsencode(home.socket))
    assert plain.returncode == as_json.returncode == EXIT_NOT_RUNNING
    assert plain.stderr == (
        f"meshactors: no daemon answers on {home.socket} (the path is {size} bytes, longer "
        "than the 107 a Unix socket's may be); use a shorter MESHACTORS_HOME, or --socket PATH\n"
    )
    assert error_of(as_json)["code"] == "not_running"
    assert "longer than the 107" in error_of(as_json)["message"]


def test_the_only_joined_network_is_the_default_and_two_need_naming(lan: Home) -> None:
    assert lan.cli("peers").stdout.strip() == "no peers"
    unknown = lan.cli("peers", "-n", "nope", "--json", check=False)
    assert unknown.returncode == EXIT_NOT_FOUND
    assert error_of(unknown)["code"] == "no_such_network"
    added = json.loads(lan.cli("network", "add", "wan", "--broker", BROKER, "--json").stdout)
    assert added["added"] is True and added["network"]["id"] == "wan"
    which = lan.cli("roster", "list", check=False)
    assert which.returncode == EXIT_USAGE
    assert "-n/--network" in which.stderr and "lan, wan" in which.stderr
    assert lan.cli("roster", "list", "-n", "wan").stdout.strip() == "roster is empty"


def test_the_old_positional_network_still_works_with_a_deprecation_note(lan: Home) -> None:
    peer = new_device()
    old = lan.cli("send", "lan", peer, "hello")
    assert old.stdout.startswith("accepted ")
    assert "`send NET TO MESSAGE` is deprecated; use `send -n NET TO MESSAGE`" in old.stderr
    new = lan.cli("send", "-n", "lan", peer, "again")
    assert new.stdout.startswith("accepted ") and new.stderr == ""
    default = json.loads(lan.cli("send", peer, "third", "--json").stdout)
    assert default["outcome"] == "accepted"


def test_a_word_too_many_is_a_usage_error_naming_it_not_an_old_form_network(lan: Home) -> None:
    for words, extra in (
        (("send", "-n", "lan", "b", "hello", "world"), "'world' (quote a message with spaces)"),
        (("send", "b", "hello", "world"), "'world' (quote a message with spaces)"),
        (("channel", "sub", "news", "other"), "'other' (one channel at a time)"),
        (("channel", "send", "news", "1", "2"), "'2' (quote a payload with spaces)"),
        (("rpc", "call", "b", "m", "1", "2"), "'2' (quote a payload with spaces)"),
    ):
        refused = lan.cli(*words, check=False)
        assert refused.returncode == EXIT_USAGE, refused
        assert refused.stderr == f"meshactors: too many arguments: {extra}\n"
    twice = lan.cli("send", "-n", "lan", "lan", new_device(), "hi", "--json", check=False)
    assert twice.returncode == EXIT_USAGE and error_of(twice)["code"] == "usage"
    assert "give the network once" in error_of(twice)["message"]


@pytest.mark.parametrize(
    ("command", "shape"),
    [
        ("send", "TO MESSAGE"),
        ("channel send", "CHANNEL PAYLOAD"),
        ("channel subscribe", "CHANNEL"),
        ("rpc call", "PEER METHOD [PAYLOAD]"),
    ],
)
def test_the_usage_line_shows_the_exact_words_a_command_takes(
    home: Home, command: str, shape: str
) -> None:
    usage = home.cli(*command.split(), "--help").stdout.split("\n\n")[0]
    assert usage.endswith(f" {shape}") and "..." not in usage


def test_a_device_is_named_by_a_prefix_or_a_label_and_ambiguity_lists_candidates(
    lan: Home,
) -> None:
    first, second = new_device(), new_device()
    lan.cli("roster", "approve", first, "--label", "twin")
    lan.cli("roster", "approve", second, "--label", "twin")
    ambiguous = lan.cli("roster", "deny", "twin", check=False)
    assert ambiguous.returncode == EXIT_USAGE
    assert first in ambiguous.stderr and second in ambiguous.stderr
    denied = json.loads(lan.cli("roster", "deny", first[:8], "--json").stdout)
    assert denied["peer"]["device_id"] == first
    lan.cli("roster", "approve", second, "--label", "solo")
    sent = json.loads(lan.cli("send", "solo", "by label", "--json").stdout)
    listed = json.loads(lan.cli("outbox", "list", "--json").stdout)["rows"]
    assert [row["destination"]["ref"] for row in listed if row["id"] == sent["id"]] == [second]
    short = lan.cli("roster", "remove", first[:7], check=False)
    assert short.returncode == EXIT_NOT_FOUND and "8+ characters" in short.stderr
    nobody = lan.cli("roster", "remove", "zzzzzzzzzz", "--json", check=False)
    assert nobody.returncode == EXIT_NOT_FOUND
    assert error_of(nobody)["code"] == "no_such_peer"


def test_daemon_toml_is_read_flags_win_and_a_bad_one_stops_start_up(home: Home) -> None:
    (home.path / "daemon.toml").write_text('broker_listen = "127.0.0.1:0"\nrole = "service"\n')
    shown = json.loads(home.cli("config", "show", "--json").stdout)["settings"]
    assert shown["role"] == {"value": "service", "source": f"file {home.path / 'daemon.toml'}"}
    assert shown["tcp"] == {"value": None, "source": "default"}
    home.cli("daemon", "up", "--detach")
    tree = json.loads(home.cli("inspect", "--json").stdout)
    assert "broker" in [child["name"] for child in tree["children"]]  # from the file
    home.cli("daemon", "down")
    bad = home.path / "bad.toml"
    bad.write_text("tcp = -1\n")
    refused = home.cli("daemon", "up", "--detach", "--config", str(bad), check=False)
    assert refused.returncode == 3
    assert refused.stderr.splitlines() == [
        f"meshactors: {bad}: tcp = -1: expected a port number 0-65535"
    ]
    assert home.daemon_pid() is None


def test_inspect_shows_one_subtree_within_80_columns(lan: Home) -> None:
    link = lan.cli("inspect", "networks/network lan/link", "--width", "80").stdout.splitlines()
    assert link[0].startswith("link  [link]") and max(map(len, link)) <= 80
    assert "state=backoff" in "\n".join(link) and "store" not in "\n".join(link)
    whole = lan.cli("inspect", "--width", "80", "--verbose").stdout.splitlines()
    assert max(map(len, whole)) <= 80
    nowhere = lan.cli("inspect", "nowhere", check=False)
    assert nowhere.returncode == EXIT_NOT_FOUND and "daemon/networks" in nowhere.stderr


def test_lifecycle_commands_answer_json_under_json(home: Home) -> None:
    labelled = json.loads(home.cli("identity", "set-label", "box", "--json").stdout)
    assert labelled["label"] == "box" and len(labelled["device_id"]) == 52
    bad = home.cli("identity", "set-label", "\x01", "--json", check=False)
    assert bad.returncode == EXIT_USAGE and error_of(bad)["code"] == "invalid_label"
    up = json.loads(home.cli("daemon", "up", "--detach", "--json").stdout)
    assert up["pid"] == home.daemon_pid() and up["socket"] == str(home.socket)
    assert json.loads(home.cli("daemon", "down", "--json").stdout) == {"stopped": True}
    assert json.loads(home.cli("daemon", "down", "--json").stdout) == {"stopped": False}


def test_identity_set_label_says_how_to_clear_it_and_that_it_was_cleared(home: Home) -> None:
    empty = home.cli("identity", "set-label", "", check=False)
    assert empty.returncode == EXIT_USAGE
    assert empty.stderr == "meshactors: label must not be empty (omit LABEL to clear it)\n"
    assert home.cli("identity", "set-label", "box").stdout.startswith("label set to box; ")
    cleared = home.cli("identity", "set-label")
    assert cleared.stdout.startswith("label cleared; ")
    assert json.loads(home.cli("identity", "show", "--json").stdout)["label"] is None


def test_outbox_list_filters_by_network(lan: Home) -> None:
    lan.cli("network", "add", "wan", "--broker", BROKER)
    lan.cli("send", "-n", "wan", new_device(), "to wan")
    assert json.loads(lan.cli("outbox", "list", "-n", "lan", "--json").stdout)["rows"] == []
    (row,) = json.loads(lan.cli("outbox", "list", "-n", "wan", "--json").stdout)["rows"]
    assert row["network"] == "wan"


def test_inbox_and_outbox_list_of_no_joined_network_exit_6_unless_it_left_messages(
    lan: Home,
) -> None:
    """Kept messages of a network left count even when the filters leave them all out."""
    lan.cli("network", "add", "wan", "--broker", BROKER)
    lan.cli("send", "-n", "wan", new_device(), "to wan")
    lan.cli("network", "remove", "wan")  # without --purge: its messages are kept
    for command in (["inbox"], ["outbox", "list"]):
        unknown = lan.cli(*command, "-n", "nosuch", "--json", check=False)
        assert unknown.returncode == EXIT_NOT_FOUND
        assert error_of(unknown)["code"] == "no_such_network"
        assert lan.cli(*command, "-n", "lan").returncode == 0
    (row,) = json.loads(lan.cli("outbox", "list", "-n", "wan", "--json").stdout)["rows"]
    assert row["network"] == "wan"
    dead = json.loads(lan.cli("outbox", "list", "-n", "wan", "--dead", "--json").stdout)
    assert dead == {"rows": [], "next_cursor": None}
