"""Commands that write state exit 3 with the failing path when the state directory cannot be
made, rather than ending in a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import Home


@pytest.mark.parametrize(
    "command",
    [
        ("identity", "show"),
        ("identity", "set-label", "x"),
        ("daemon", "accept-host"),
        ("daemon", "up"),
    ],
)
def test_unwritable_state_directory_exits_3_with_a_clear_message(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the home directory should go")
    result = Home(blocker / "home").cli(*command, check=False)
    assert result.returncode == 3
    assert result.stderr.startswith("meshactors: cannot prepare ")
    assert "Traceback" not in result.stderr
    assert blocker.read_text() == "a file where the home directory should go"
