"""Device names as the CLI resolves them, against real daemons that announce labels."""

from __future__ import annotations

import trio

from tests.network.appclient import AppClient
from tests.network.conftest import NET, Mesh, run_cli
from tests.network.test_rpc import serve_once


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
