"""A socket path that cannot be connected to for another reason than no socket or no listener
(here: a regular file on the way, ENOTDIR, which root meets too) is `connect_failed` in both
clients and in the CLI, never "no daemon running" and never "start one"."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.cli.common import EXIT_FAILURE
from meshactors.client.errors import ClientError
from meshactors.client.mesh import MeshClient
from meshactors.client.sync import SyncClient
from tests.support import Home


@pytest.fixture
def unusable(tmp_path: Path) -> Path:
    """A socket path under a regular file: connecting to it fails ENOTDIR."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    return blocker / "daemon.sock"


def test_the_sync_client_says_connect_failed_as_the_async_one_does(unusable: Path) -> None:
    with pytest.raises(ClientError) as sync_failure:
        SyncClient.connect(unusable)

    async def connect_async() -> None:
        with trio.fail_after(10):
            async with MeshClient(unusable, connect_timeout=5):
                pass

    with pytest.raises(ClientError) as async_failure:
        trio.run(connect_async)
    assert sync_failure.value.code == async_failure.value.code == "connect_failed"
    assert str(sync_failure.value) == str(async_failure.value)
    assert str(unusable) in sync_failure.value.message
    assert "Not a directory" in sync_failure.value.message


def test_a_command_and_daemon_down_name_the_failure_not_a_missing_daemon(
    tmp_path: Path, unusable: Path
) -> None:
    home = Home(tmp_path)
    for command in (["daemon", "status"], ["daemon", "down"]):
        result = home.cli("--socket", str(unusable), *command, check=False)
        assert result.returncode == EXIT_FAILURE, (command, result.stderr)
        assert f"cannot connect to {unusable}: Not a directory" in result.stderr
        assert "no daemon" not in result.stderr and "start one" not in result.stderr
