"""`daemon up --debug-ops` (or `debug_ops = true` in daemon.toml) makes a detached daemon answer
`debug_crash`; without it the op is unknown."""

from __future__ import annotations

import json

import pytest

from meshactors.client.sync import ClientError, SyncClient
from tests.support import Home


def restarts_of_outbox(home: Home) -> int:
    tree = json.loads(home.cli("inspect", "--json").stdout)
    outbox = next(child for child in tree["children"] if child["name"] == "outbox")
    return int(outbox["restarts"])


@pytest.mark.parametrize("how", ["flag", "file"])
def test_a_detached_daemon_with_debug_ops_crashes_the_actor_asked(home: Home, how: str) -> None:
    if how == "file":
        (home.path / "daemon.toml").write_text("debug_ops = true\n")
        home.cli("daemon", "up", "--detach")
    else:
        home.cli("daemon", "up", "--detach", "--debug-ops")
    with SyncClient.connect(home.socket) as client:
        crashed = client.call("debug_crash", path="daemon/outbox")
    assert crashed == {"path": "daemon/outbox", "kind": "outbox", "crashed": True}
    assert restarts_of_outbox(home) == 1
    home.cli("daemon", "down")


def test_without_debug_ops_the_op_is_unknown(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    with SyncClient.connect(home.socket) as client, pytest.raises(ClientError) as refused:
        client.call("debug_crash", path="daemon/outbox")
    assert refused.value.code == "unknown_op"
    assert restarts_of_outbox(home) == 0
    home.cli("daemon", "down")
