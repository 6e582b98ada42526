"""Device names as the CLI resolves them, against real daemons that announce labels."""

from __future__ import annotations

import json
from typing import Any

import trio

from meshactors.cli.common import EXIT_NOT_FOUND, EXIT_USAGE
from tests.network.appclient import AppClient
from tests.network.conftest import NET, Daemon, Mesh, run_cli
from tests.network.test_rpc import serve_once

NET_TOO = "net2"  # a second network both a and b join


async def test_our_own_label_names_this_device_though_a_peer_announces_it_too(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    home, other = await mesh.daemon("home", label="me"), await mesh.daemon("other", label="me")
    await home.join(mesh.url)
    await other.join(mesh.url)
    pending = await home.wait_event("peer_pending", network=NET, device_id=other.device_id)
    assert pending["label"] == "me"  # its hello claims our label, unapproved as it is
    server = await AppClient.open(home.services.paths.socket, nursery)
    await server.call("rpc_register", network=NET, method="upper")
    nursery.start_soon(serve_once, server, "upper", "HI")
    done = await run_cli(home, "rpc", "call", "-n", NET, "me", "upper", '"hi"')
    assert (done.returncode, done.stdout) == (0, b'"HI"\n'), done.stderr.decode()


async def _joined_both(a: Daemon, b: Daemon, network_id: str) -> None:
    """a and b approve each other in `network_id` (joined already) and see each other active."""
    await a.call("roster_approve", network=network_id, device_id=b.device_id)
    await b.call("roster_approve", network=network_id, device_id=a.device_id)
    await a.wait_event("peer_active", network=network_id, device_id=b.device_id)
    await b.wait_event("peer_active", network=network_id, device_id=a.device_id)


async def _alice_and_bob(mesh: Mesh) -> tuple[Daemon, Daemon]:
    """Daemons labelled alice and bob, each approving the other in NET and NET_TOO."""
    a, b = await mesh.daemon("a", label="alice"), await mesh.daemon("b", label="bob")
    for network_id in (NET, NET_TOO):
        await a.join(mesh.url, network_id)
        await b.join(mesh.url, network_id)
        await _joined_both(a, b, network_id)
    return a, b


async def test_inbox_from_a_label_or_prefix_without_n_covers_every_network(mesh: Mesh) -> None:
    a, b = await _alice_and_bob(mesh)
    for network_id in (NET, NET_TOO):
        key = f"hello-{network_id}"
        await a.call("send", network=network_id, to=b.device_id, message=key, client_message_id=key)
        await b.wait_event("message", client_message_id=key)

    for name in ("alice", a.device_id[:12]):
        listed = await run_cli(b, "inbox", "--from", name, "--json")
        assert listed.returncode == 0, listed.stderr.decode()
        messages = json.loads(listed.stdout)["messages"]
        assert sorted((m["network"], m["from"]) for m in messages) == [
            (NET, a.device_id),
            (NET_TOO, a.device_id),
        ]

    # carol announces alice's label in net2 only: without -n the name means two devices
    carol = await mesh.daemon("c", label="alice")
    await carol.join(mesh.url, NET_TOO)
    await _joined_both(b, carol, NET_TOO)
    twice = await run_cli(b, "inbox", "--from", "alice")
    assert twice.returncode == EXIT_USAGE, twice.stderr.decode()
    stderr = twice.stderr.decode()
    assert "names several devices in the joined networks" in stderr
    assert a.device_id in stderr and carol.device_id in stderr
    in_net = await run_cli(b, "inbox", "-n", NET, "--from", "alice", "--json")
    assert in_net.returncode == 0, in_net.stderr.decode()
    assert [m["network"] for m in json.loads(in_net.stdout)["messages"]] == [NET]


async def test_inbox_from_a_name_in_a_network_left_looks_in_the_joined_ones(mesh: Mesh) -> None:
    a, b = await _alice_and_bob(mesh)
    await a.call("send", network=NET, to=b.device_id, message="kept", client_message_id="kept")
    await b.wait_event("message", client_message_id="kept")
    await b.call("network_remove", network=NET)  # left: its inbox is kept, its peers are not

    async def listed(name: str) -> list[Any]:
        found = await run_cli(b, "inbox", "-n", NET, "--from", name, "--json")
        assert found.returncode == 0, found.stderr.decode()
        return [m["message"] for m in json.loads(found.stdout)["messages"]]

    for name in ("alice", a.device_id[:12]):  # alice is still a peer of net2
        assert await listed(name) == ["kept"]

    await b.call("network_remove", network=NET_TOO)  # now alice is known nowhere
    unknown = await run_cli(b, "inbox", "-n", NET, "--from", "alice")
    assert unknown.returncode == EXIT_NOT_FOUND, unknown.stderr.decode()
    stderr = unknown.stderr.decode()
    assert f"{NET!r} is not joined" in stderr and "full device id" in stderr
    assert await listed(a.device_id) == ["kept"]
    typo = await run_cli(b, "inbox", "-n", "no-such-net", "--from", "alice")
    assert typo.returncode == EXIT_NOT_FOUND, typo.stderr.decode()
    assert "no network 'no-such-net' is joined" in typo.stderr.decode()
