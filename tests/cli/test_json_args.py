"""A JSON argument that does not parse, however it fails, is a one-line usage error (exit 2)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshactors.cli.common import CommandFailed, parse_json_arg
from tests.support import Home

DEEP = "[" * 50_000  # deeper than the parser goes: it raises RecursionError, not ValueError


@pytest.mark.parametrize("text", ["[1,", DEEP], ids=["bad", "deep"])
@pytest.mark.parametrize(
    ("command", "what"),
    [
        (("state", "set", "-n", "x", "k"), "the value"),
        (("channel", "send", "-n", "x", "c"), "the payload"),
    ],
    ids=["state-set", "channel-send"],
)
def test_a_bad_json_argument_is_one_usage_line_and_exit_2(
    tmp_path: Path, command: tuple[str, ...], what: str, text: str
) -> None:
    result = Home(tmp_path / "home").cli(*command, text, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(f"meshactors: {what} is not valid JSON: ")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ("rpc", "call", "-n", "x", "me", "upper", "hi"),
        ("state", "set", "-n", "x", "k", "hi"),
        ("channel", "send", "-n", "x", "news", "hi"),
    ],
    ids=["rpc-call", "state-set", "channel-send"],
)
def test_a_bare_word_for_json_says_how_to_quote_it(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = Home(tmp_path / "home").cli(*command, check=False)
    assert result.returncode == 2
    assert result.stderr.rstrip("\n").endswith("""a string must be quoted as JSON: '"hi"'""")


def _not_json(text: str) -> bool:
    """Whether `text` is no JSON document at all."""
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@given(st.text().filter(_not_json))
def test_any_text_that_is_not_json_exits_2_with_its_quoted_form(text: str) -> None:
    with pytest.raises(CommandFailed) as failed:
        parse_json_arg(text, "the value")
    assert failed.value.code == 2
    hint = failed.value.message.rpartition("; a string must be quoted as JSON: ")[2]
    assert json.loads(shlex.split(hint)[0]) == text
