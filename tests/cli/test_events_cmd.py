"""`meshactors events` against a real daemon: a refused start is an error of starting."""

from __future__ import annotations

import functools

import trio

from meshactors.cli.common import EXIT_USAGE
from meshactors.daemon.services import Services
from tests.support import Home


async def test_a_refused_subscribe_is_an_error_of_starting_not_an_ended_stream(
    daemon: Services,
) -> None:
    home = Home(daemon.paths.socket.parent)
    assert home.socket == daemon.paths.socket
    run = functools.partial(home.cli, "events", "--since", "-1", check=False)
    result = await trio.to_thread.run_sync(run)
    assert result.returncode == EXIT_USAGE
    assert "cannot start the event stream: invalid_params" in result.stderr, result.stderr
    assert "ended" not in result.stderr
