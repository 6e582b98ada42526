"""Commands that write state exit 3 with the failing path when the state directory cannot be
made, rather than ending in a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import Home, no_file_growth


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


def test_set_label_on_an_unusable_identity_file_exits_3_not_as_a_bad_label(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.path.mkdir()
    identity_file = home.path / "identity.json"
    identity_file.write_text("{garbage")
    identity_file.chmod(0o600)

    result = home.cli("identity", "set-label", "laptop", check=False)
    as_json = home.cli("identity", "set-label", "laptop", "--json", check=False)

    assert result.returncode == as_json.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"meshactors: identity file {identity_file} is unusable (")
    assert json.loads(as_json.stdout)["error"]["code"] == "startup"
    assert identity_file.read_text() == "{garbage"


def test_set_label_that_cannot_be_written_exits_3_not_as_a_bad_label(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.cli("identity", "show")

    result = home.cli("identity", "set-label", "laptop", check=False, preexec_fn=no_file_growth)

    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    identity_file = home.path / "identity.json"
    assert line == f"meshactors: cannot write identity file {identity_file}: File too large"
