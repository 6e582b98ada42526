"""An `rpc_call` cancelled (`rpc_cancel{call}`) before its task first ran is refused before
core opens it: the serving side is never told of it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from meshactors.actors import Broadcast
from meshactors.control.session import CutOff, Push, Session
from meshactors.daemon.services import Services
from meshactors.ops.optable import finish
from meshactors.wire.ipc import ErrorCode, OpError, Request
from tests.network.conftest import UNREACHABLE, WAIT
from tests.support import LineClient

CALL = {"network": "n", "method": "m", "timeout_ms": 60_000}


async def next_call_event(server: LineClient) -> dict[str, Any]:
    """The next event the serving connection is told about a call."""
    while (frame := await server.frame()).get("kind") not in ("rpc_inbound", "rpc_cancelled"):
        pass
    return frame


async def test_a_call_cancelled_before_it_ran_never_reaches_its_serving_side(
    daemon: Services, connect: Any
) -> None:
    server: LineClient = await connect()
    assert (await server.call("network_add", config={"id": "n", "brokers": [UNREACHABLE]}))["ok"]
    assert (await server.call("rpc_register", network="n", method="m"))["ok"]
    own = daemon.identity.device_id
    async with trio.open_nursery() as nursery:
        pushes = Broadcast[Push]().subscribe(16, 16)
        session = Session("early", daemon, pushes, nursery, sink=None)  # type: ignore[arg-type]
        request = Request(1, "rpc_call", {**CALL, "peer": own, "payload": "early"})
        work = daemon.ops.begin(session, request)  # rpc_call is cancellable by its id
        assert session.cancel_request(1)  # as when the cancel ran before the call's task
        with pytest.raises(OpError) as refused:
            await finish(session, request, work)
        assert refused.value.code == ErrorCode.CANCELLED
        await session.close(trio.open_memory_channel[CutOff](1)[0])
    caller: LineClient = await connect()
    await caller.send("rpc_call", **CALL, peer=own, payload="later")
    with trio.fail_after(WAIT):
        first = await next_call_event(server)
    assert (first["kind"], first["payload"]) == ("rpc_inbound", "later")
