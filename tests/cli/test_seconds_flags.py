"""Every flag in seconds takes a number in its range or exits 2 (usage): never nan, inf, a
negative, nor a sub-millisecond value rounded up to 1 ms for the daemon."""

from __future__ import annotations

import functools
import math
from argparse import ArgumentParser

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshactors.broker.limits import MAX_PERIOD_S
from meshactors.cli import main
from meshactors.cli.app import build_parser, leaf_parsers, parse
from meshactors.cli.common import EXIT_USAGE
from meshactors.daemon.outbox import MAX_ACK_TIMEOUT_S
from meshactors.membership.part import MAX_TTL_S
from meshactors.network.channels import MAX_TTL_MS
from meshactors.network.rpc import MAX_TIMEOUT_MS


@functools.cache
def _parser() -> ArgumentParser:
    return build_parser()


# (command words, "{}" where the flag goes; its dest; the most seconds it takes; whether the
# daemon takes it in whole ms, so the least is 1 ms and the value is the ms)
SECONDS_FLAG_CASES = [
    (["channel", "send", "{}", "ch", "1"], "--ttl", "ttl_ms", MAX_TTL_MS / 1000, True),
    (["rpc", "call", "{}", "peer", "m"], "--timeout", "timeout_ms", MAX_TIMEOUT_MS / 1000, True),
    (["stream", "send", "{}", "peer", "m"], "--timeout", "timeout_ms", MAX_TIMEOUT_MS / 1000, True),
    (["rpc", "serve", "{}", "m"], "--timeout", "timeout", MAX_TIMEOUT_MS / 1000, False),
    (["members", "invite", "{}"], "--ttl", "ttl", MAX_TTL_S, False),
    (["broker", "{}"], "--handshake-timeout", "handshake_timeout", MAX_PERIOD_S, False),
    (["broker", "{}"], "--admission-timeout", "admission_timeout", MAX_PERIOD_S, False),
    (["broker", "{}"], "--cluster-heartbeat", "cluster_heartbeat", MAX_PERIOD_S, False),
    (["broker", "{}"], "--cluster-ttl", "cluster_ttl", MAX_PERIOD_S, False),
    (["daemon", "up", "{}"], "--ack-timeout", "ack_timeout", MAX_ACK_TIMEOUT_S, False),
]
NONSENSE_SECONDS = ["nan", "-nan", "NaN", "inf", "-inf", "0", "-0", "-5", "0.0001", "1e309", "x"]


def _expected(text: str, upper: float, in_ms: bool) -> float | None:
    """What the flag should hold for `text` (None: a usage error)."""
    try:
        number = float(text)
    except ValueError:
        return None
    if not (number >= 0.001 if in_ms else number > 0) or not number <= upper:
        return None
    return round(number * 1000) if in_ms else number


def test_every_flag_in_seconds_is_checked_and_none_takes_any_float() -> None:
    floats = [
        (leaf.prog, action.option_strings)
        for leaf in leaf_parsers(_parser())
        for action in leaf._actions
        if action.type is float
    ]
    assert floats == []
    in_seconds = {
        (leaf.prog.removeprefix("meshactors "), action.dest)
        for leaf in leaf_parsers(_parser())
        for action in leaf._actions
        if action.metavar == "SECONDS"
    }
    assert in_seconds == {(" ".join(w[: w.index("{}")]), d) for w, _, d, _, _ in SECONDS_FLAG_CASES}


@pytest.mark.parametrize(("words", "flag", "dest", "upper", "in_ms"), SECONDS_FLAG_CASES)
@settings(max_examples=150, deadline=None)
@given(
    text=st.one_of(
        st.sampled_from(NONSENSE_SECONDS),
        st.floats().map(str),
        st.floats(min_value=-1.0, max_value=1e7).map(str),
        st.integers().map(str),
        st.text(max_size=12),
    )
)
@example(text="600.0004")
@example(text="0.001")
@example(text="86400")
def test_a_flag_in_seconds_holds_a_number_in_its_range_or_exits_2(
    words: list[str], flag: str, dest: str, upper: float, in_ms: bool, text: str
) -> None:
    argv = [f"{flag}={text}" if word == "{}" else word for word in words]
    want = _expected(text, upper, in_ms)
    try:
        got = getattr(parse(_parser(), argv), dest)
    except SystemExit as refused:
        assert refused.code == EXIT_USAGE
        assert want is None, (text, want)
        return
    assert want is not None, (text, got)
    assert math.isfinite(got) and got == want
    if in_ms:
        assert type(got) is int and 1 <= got <= upper * 1000


@pytest.mark.parametrize("ttl", ["nan", "inf", "-5", "0", "0.0001"])
def test_a_reliable_send_with_a_nonsense_ttl_is_a_usage_error_before_any_daemon(
    ttl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["channel", "send", "-n", "n1", "--reliable", "--to", "p", "ch", "1", "--ttl", ttl])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "argument --ttl: expected a number from 0.001 to 600" in err
    assert "Traceback" not in err
