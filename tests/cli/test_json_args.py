"""A JSON argument that does not parse, however it fails, is a one-line usage error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
