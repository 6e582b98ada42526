"""A streaming command whose reader goes away (`meshactors events | head -3`) ends quietly with
exit 0, not in a BrokenPipeError traceback."""

from __future__ import annotations

import pytest

from tests.support import CLI_TIMEOUT, Home

pytestmark = pytest.mark.e2e

UNREACHABLE = "ws://127.0.0.1:9/v1"  # the discard port: each update is an event, no traffic


def test_events_into_a_pipe_closed_early_ends_quietly_with_exit_0(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    home.cli("network", "add", "lan", "--broker", UNREACHABLE)  # an event to replay
    follower = home.popen("events", "--json", "--since", "0")
    assert follower.stdout is not None and follower.stderr is not None
    try:
        assert follower.stdout.readline()  # the stream is flowing
        follower.stdout.close()  # the reader leaves, like `head` after its lines
        for n in range(3):  # more events to write into the closed pipe
            home.cli("network", "update", "lan", "--broker", UNREACHABLE, "--label", f"l{n}")
        code = follower.wait(timeout=CLI_TIMEOUT)
    except BaseException:
        follower.kill()
        raise
    errors = follower.stderr.read()
    follower.stderr.close()
    assert (code, errors) == (0, "")
