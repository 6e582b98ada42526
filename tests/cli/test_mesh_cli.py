"""The mesh commands parse as documented and print events as readable lines."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshactors.broker.limits import OUTBOUND_QUEUE_BYTES, BrokerConfig
from meshactors.broker.server import Broker
from meshactors.cli import broker_cmd, main, mesh
from meshactors.cli.app import build_parser, leaf_parsers, parse
from meshactors.cli.common import EXIT_USAGE
from meshactors.cli.mesh import TAGS_CELL_CHARS, format_event, membership_note, tags_cell
from meshactors.daemon.broker_actor import parse_listen
from meshactors.membership.facts import MAX_AT_MS
from meshactors.network.link import WELCOME_TIMEOUT

DEVICE = "a" * 52
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("word", ["capabilities", "caps"])
def test_capabilities_help_names_the_full_command(
    word: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([word, "set", "--help"])
    assert capsys.readouterr().out.startswith("usage: meshactors capabilities set ")


def test_mesh_commands_parse() -> None:
    parser = build_parser()
    add = parser.parse_args(
        ["network", "add", "n1", "--broker", "ws://h:1/v1", "--broker", "ws://g:2/v1"]
    )
    assert (add.id, add.broker, add.auto_approve) == ("n1", ["ws://h:1/v1", "ws://g:2/v1"], False)
    update = parser.parse_args(["network", "update", "n1", "--no-auto-approve"])
    assert (update.broker, update.auto_approve) == (None, False)
    approve = parser.parse_args(["roster", "approve", DEVICE, "-n", "n1", "--label", "b"])
    assert (approve.device_id, approve.network, approve.label) == (DEVICE, "n1", "b")
    peers = parser.parse_args(["peers", "--all", "--json"])
    assert (peers.all, peers.json, peers.network) == (True, True, None)
    caps = parser.parse_args(["caps", "set", "--tag", "x", "--tag", "y", "--extra", '{"a":1}'])
    assert caps.tag == ["x", "y"]
    profile = parser.parse_args(["profile", "set", "--status", "dnd", "--invisible"])
    assert (profile.status, profile.visible, profile.network) == ("dnd", False, None)
    kept = parser.parse_args(["profile", "set", "--summary", ""])
    assert (kept.display_name, kept.status, kept.summary, kept.visible) == (None, None, "", None)
    show = parser.parse_args(["profile", "show", "-n", "n1", "--json"])
    assert (show.network, show.json) == ("n1", True)
    broker = parser.parse_args(["broker", "--listen", "127.0.0.1:0"])
    assert broker.listen == "127.0.0.1:0"
    up = parser.parse_args(["daemon", "up", "--broker-listen", "0.0.0.0:7800"])
    assert up.broker_listen == "0.0.0.0:7800"


@pytest.mark.parametrize("flag", ["--handshake-timeout", "--admission-timeout"])
def test_the_broker_takes_its_timeouts_as_flags(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["broker", flag, "0"])
    assert exited.value.code == EXIT_USAGE
    assert f"argument {flag}: expected a number greater than 0" in capsys.readouterr().err


@pytest.fixture
def served_brokers(monkeypatch: pytest.MonkeyPatch) -> list[Broker]:
    """`meshactors broker` runs up to serving, which is stood in for: what it would serve."""
    served: list[Broker] = []

    async def record(broker: Broker, host: str, port: int) -> None:
        served.append(broker)

    monkeypatch.setattr(broker_cmd, "_serve_until_signal", record)
    return served


@pytest.mark.parametrize("flag", ["--cluster-heartbeat", "--cluster-ttl", "--admission-timeout"])
def test_a_cluster_flag_without_a_cluster_is_a_usage_error(
    flag: str, served_brokers: list[Broker], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["broker", "--listen", "127.0.0.1:0", flag, "3"])
    assert (exited.value.code, served_brokers) == (EXIT_USAGE, [])
    assert f"{flag} is for a cluster: it needs --cluster" in capsys.readouterr().err


def test_a_heartbeat_the_default_ttl_cannot_cover_names_both_flags(
    served_brokers: list[Broker], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["broker", "--cluster", "redis://h/0", "--cluster-heartbeat", "5"])
    assert (exited.value.code, served_brokers) == (EXIT_USAGE, [])
    err = capsys.readouterr().err
    assert "--cluster-ttl (8.0) must cover two --cluster-heartbeat periods (5.0 each)" in err


@pytest.mark.parametrize(
    ("seconds", "refused"), [(WELCOME_TIMEOUT - 0.5, False), (WELCOME_TIMEOUT, True), (60, True)]
)
def test_an_admission_timeout_past_the_daemons_welcome_timeout_is_refused(
    seconds: float, refused: bool, served_brokers: list[Broker], capsys: pytest.CaptureFixture[str]
) -> None:
    """A hello admitted after the daemon stopped waiting for its welcome finds it gone."""
    with pytest.raises(SystemExit) as exited:
        main(["broker", "--cluster", "redis://h/0", "--admission-timeout", str(seconds)])
    if not refused:
        assert exited.value.code == 0
        assert [broker.config.admission_timeout for broker in served_brokers] == [seconds]
        return
    assert (exited.value.code, served_brokers) == (EXIT_USAGE, [])
    assert "--admission-timeout" in capsys.readouterr().err


def test_a_message_size_past_the_outbound_queue_is_refused_in_flag_terms(
    served_brokers: list[Broker], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["broker", "--max-message-bytes", str(OUTBOUND_QUEUE_BYTES + 1)])
    assert (exited.value.code, served_brokers) == (EXIT_USAGE, [])
    err = capsys.readouterr().err
    queue = f"at most {OUTBOUND_QUEUE_BYTES} (the outbound queue holds one message)"
    assert f"--max-message-bytes must be {queue}, not {OUTBOUND_QUEUE_BYTES + 1}" in err


# each broker limit flag with values on both sides of what BrokerConfig takes
BROKER_LIMIT_VALUES = {
    "--max-peers": st.integers(-1, 300),
    "--max-message-bytes": st.integers(-1, 2 * OUTBOUND_QUEUE_BYTES),
    "--max-unhelloed-per-address": st.integers(-1, 300),
    "--handshake-timeout": st.floats(0.5, 20),
    "--cluster-heartbeat": st.floats(0.5, 20),
    "--cluster-ttl": st.floats(0.5, 20),
    "--admission-timeout": st.floats(0.5, 20),
}


@settings(max_examples=100, deadline=None)
@given(limits=st.fixed_dictionaries({}, optional=BROKER_LIMIT_VALUES))
@example(limits={"--max-message-bytes": OUTBOUND_QUEUE_BYTES + 1})
@example(limits={"--max-message-bytes": 0, "--max-peers": 0})
@example(limits={"--max-unhelloed-per-address": 0})
@example(limits={"--cluster-ttl": 1.0})
def test_a_refused_broker_limit_is_told_in_flags_not_in_config_fields(
    limits: dict[str, float],
) -> None:
    """Flags are all a `broker` user knows: an error names no BrokerConfig field."""
    served: list[Broker] = []

    async def record(broker: Broker, host: str, port: int) -> None:
        served.append(broker)

    argv = ["broker", "--listen", "127.0.0.1:0", "--cluster", "redis://h/0"]
    for flag, value in limits.items():
        argv += [flag, str(value)]
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(broker_cmd, "_serve_until_signal", record)
        with pytest.raises(SystemExit) as exited:
            main(argv)
    if exited.value.code == 0:
        config = attrs.asdict(served[0].config)
        taken = {f"--{key.replace('_', '-')}": config[key] for key in broker_cmd.LIMIT_FLAGS}
        assert taken.items() >= limits.items()
        return
    assert (exited.value.code, served) == (EXIT_USAGE, []), stderr.getvalue()
    named = [field.name for field in attrs.fields(BrokerConfig) if field.name in stderr.getvalue()]
    assert named == [], stderr.getvalue()


def test_the_broker_listens_by_default_where_its_unit_and_the_docs_say(
    capsys: pytest.CaptureFixture[str],
) -> None:
    unit = (ROOT / "meshactors/units/meshactors-broker.service").read_text()
    assert "broker --listen 127.0.0.1:7447\n" in unit
    assert build_parser().parse_args(["broker"]).listen == "127.0.0.1:7447"
    with pytest.raises(SystemExit):
        main(["broker", "--help"])
    assert "default 127.0.0.1:7447" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["members", "invite"], ["--role", "default member", "default 86400", "default 1"]),
        (["members", "grant"], ["default member"]),
        (["members", "revoke"], ["default member"]),
        (["rpc", "serve"], ["default 30"]),
        (["channel", "send"], ["default 10", "fails at once (exit 7"]),
        (["inbox"], ["messages per page (1-500, default 100)"]),
        (["outbox", "list"], ["rows per page (1-500, default 100)"]),
        (["state", "list"], ["keys per page (1-500, default 100)"]),
    ],
)
def test_help_shows_the_defaults_and_what_a_flag_does_not_do(
    command: list[str], shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in shown:
        assert part in text


def test_a_ttl_without_reliable_is_refused_not_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["channel", "send", "-n", "n1", "ch", "1", "--ttl", "5"])
    assert exited.value.code == EXIT_USAGE
    assert "--ttl is how long --reliable resends" in capsys.readouterr().err


def test_events_print_as_readable_lines_or_json() -> None:
    event = {
        "kind": "peer_active",
        "event_id": 7,
        "at_ms": 0,
        "network": "n1",
        "device_id": DEVICE,
        "label": "b",
        "status": "active",
    }
    line = format_event(event, as_json=False)
    assert "#7" in line and "peer_active" in line and f"{DEVICE[:12]} (b)" in line
    assert "network=n1" in line and "status=active" in line
    assert json.loads(format_event(event, as_json=True)) == event


def test_the_streams_own_notices_print_their_numbers() -> None:
    gap = format_event({"kind": "events_gap", "since": 3, "oldest_kept": 9}, as_json=False)
    assert "events_gap" in gap and "since=3" in gap and "oldest_kept=9" in gap
    lagged = format_event({"kind": "lagged", "skipped": 4}, as_json=False)
    assert "lagged" in lagged and "skipped=4" in lagged


@pytest.mark.parametrize("at", [0, 253402300800000, MAX_AT_MS])
def test_an_eviction_at_any_time_a_fact_may_carry_prints(at: int) -> None:
    note = membership_note({"membership": {"evicted": {"by": DEVICE, "at": at}}})
    assert note is not None and note.startswith(f"evicted by {DEVICE[:12]} at ")
    if at > 253402300799999:  # past year 9999: no date shows it, the figure does
        assert note.endswith(f"at {at} ms since the epoch")


def test_listen_addresses_are_checked() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:7800") == ("::1", 7800)
    for bad in ("7800", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_every_command_takes_json_and_names_match_ops() -> None:
    parser = build_parser()
    leaves = leaf_parsers(parser)
    assert len(leaves) > 25
    assert all("--json" in leaf._option_string_actions for leaf in leaves)
    subscribe = parser.parse_args(["channel", "subscribe", "news", "-n", "lan"])
    alias = parser.parse_args(["channel", "sub", "news", "-n", "lan"])
    assert subscribe.run is alias.run and (alias.words, alias.network) == (["news"], "lan")


def test_free_words_may_follow_options() -> None:
    args = parse(build_parser(), ["channel", "send", "lan", "news", "--retain", '{"n": 1}'])
    assert (args.words, args.retain) == (["lan", "news", '{"n": 1}'], True)
    negative = parse(build_parser(), ["rpc", "call", "peer", "--stream", "m", "-1"])
    assert negative.words == ["peer", "m", "-1"]
    with pytest.raises(SystemExit) as refused:
        parse(build_parser(), ["channel", "send", "news", "1", "--bogus"])
    assert refused.value.code == EXIT_USAGE


def test_a_flag_given_a_bare_double_dash_as_its_value_is_a_usage_error() -> None:
    for words in (["rpc", "call", "--timeout=--", "peer", "m"], ["broker", "--cluster-ttl=--"]):
        with pytest.raises(SystemExit) as refused:
            parse(build_parser(), words)
        assert refused.value.code == EXIT_USAGE
    served = parse(build_parser(), ["rpc", "serve", "m", "--", "cmd", "--opt=--"])
    assert served.command[-1] == "--opt=--"


def test_a_peer_advertising_many_long_tags_does_not_widen_the_peers_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tags = [f"{n:02d}" + "t" * 62 for n in range(64)]  # the most an advert may carry
    peers = [
        {
            "device_id": name * 52,
            "label": name,
            "status": "active",
            "incompatible": None,
            "role": None,
            "rtt_ms": None,
            "profile": None,
            "capabilities": {"tags": peer_tags},
        }
        for name, peer_tags in (("a", tags), ("b", ["gpu"]))
    ]
    monkeypatch.setattr(mesh, "call", lambda *_args, **_params: {"peers": peers})
    for args in (["peers", "--network", "n"], ["peers", "--network", "n", "--json"]):
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 0
    table, listed = capsys.readouterr().out.split("\n[", 1)
    lines = table.splitlines()
    assert max(map(len, lines)) < 100
    assert lines[1].split()[-1] == tags[0][: TAGS_CELL_CHARS - 5] + "…,+63"
    assert lines[2].split()[-1] == "gpu"
    assert [p["capabilities"]["tags"] for p in json.loads("[" + listed)] == [tags, ["gpu"]]


@given(st.lists(st.text("abc", min_size=1, max_size=64), max_size=64))
def test_a_tags_cell_shows_the_first_tags_and_counts_the_rest(tags: list[str]) -> None:
    cell = tags_cell(tags)
    assert len(cell) <= TAGS_CELL_CHARS
    if len(",".join(tags)) <= TAGS_CELL_CHARS:
        assert cell == (",".join(tags) or "-")
        return
    *shown, rest = cell.split(",") if "," in cell else (cell, "+0")
    left = int(rest.removeprefix("+"))
    if shown[-1].endswith("…"):  # the first tag alone was too long: cut
        assert len(shown) == 1 and tags[0].startswith(shown[0].removesuffix("…"))
        assert left == len(tags) - 1
    else:
        assert shown == tags[: len(tags) - left] and left > 0


def test_every_option_and_argument_of_every_command_says_what_it_does() -> None:
    unexplained = [
        f"{leaf.prog} {'/'.join(action.option_strings) or action.dest}"
        for leaf in leaf_parsers(build_parser())  # `broker` and `daemon up` among them
        for action in leaf._actions
        if not action.help
    ]
    assert unexplained == []


def test_every_option_with_a_default_shows_it() -> None:
    """An option that stands for a value when left out says which (none: nothing to say)."""
    unshown = [
        f"{leaf.prog} {'/'.join(action.option_strings)}"
        for leaf in leaf_parsers(build_parser())
        for action in leaf._actions
        if action.option_strings
        and action.default not in (None, False, "", [], argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert unshown == []


def test_each_broker_limit_flag_shows_the_default_it_leaves() -> None:
    """Broker limits default to None (BrokerConfig's own default stands): the help says it."""
    (broker,) = [leaf for leaf in leaf_parsers(build_parser()) if leaf.prog == "meshactors broker"]
    helps = {action.dest: action.help or "" for action in broker._actions}
    for field in broker_cmd.LIMIT_FLAGS:
        said = re.search(r"default ([0-9.]+)", helps[field])
        assert said is not None, field
        assert float(said.group(1)) == attrs.fields_dict(BrokerConfig)[field].default, field


@pytest.mark.parametrize("width", ["0", "-3", "23", "wide"])
def test_inspect_refuses_a_width_no_line_fits_in(
    width: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["inspect", "--width", width])
    assert exited.value.code == EXIT_USAGE
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage line
    assert line.startswith("meshactors: inspect: argument --width: "), line


@pytest.mark.parametrize(
    ("flags", "told"),
    [
        (["--cluster-heartbeat", "0.001", "--cluster-ttl", "1"], "--cluster-heartbeat (0.001)"),
        (["--cluster-ttl", "0.0005"], "--cluster-ttl (0.0005)"),
        (["--cluster-ttl", "0.5", "--cluster-heartbeat", "0.1"], "--cluster-ttl (0.5)"),
    ],
)
def test_cluster_periods_that_can_never_work_are_refused(
    flags: list[str], told: str, served_brokers: list[Broker], capsys: pytest.CaptureFixture[str]
) -> None:
    """A TTL under 1 ms is PX 0 (Redis refuses it: never connected); one beat every few ms
    flaps: both exit 2 naming the flag and its floor."""
    with pytest.raises(SystemExit) as exited:
        main(["broker", "--cluster", "redis://h/0", *flags])
    assert (exited.value.code, served_brokers) == (EXIT_USAGE, [])
    assert f"{told} must be at least" in capsys.readouterr().err
