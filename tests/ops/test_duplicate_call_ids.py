"""An `rpc_call` whose request `id` is that of one of the connection's calls still in flight is
refused `conflict` before it is sent: `rpc_cancel{call}` names a call by that id, and could
reach only one of the two."""

from __future__ import annotations

import json
from typing import Any

import trio

from meshactors.daemon.services import Services
from tests.network.conftest import UNREACHABLE, WAIT
from tests.ops.test_rpc_cancelled_early import next_call_event
from tests.support import LineClient

DUPLICATED_ID = 7


async def test_a_second_call_with_the_id_of_one_in_flight_is_refused_and_the_first_cancels(
    daemon: Services, connect: Any
) -> None:
    server: LineClient = await connect()
    assert (await server.call("network_add", config={"id": "n", "brokers": [UNREACHABLE]}))["ok"]
    assert (await server.call("rpc_register", network="n", method="m"))["ok"]
    call = {"op": "rpc_call", "network": "n", "peer": daemon.identity.device_id, "method": "m"}

    def line(payload: int) -> bytes:
        return json.dumps({"id": DUPLICATED_ID, **call, "payload": payload}).encode() + b"\n"

    caller: LineClient = await connect()
    with trio.fail_after(WAIT):
        await caller.send_raw(
            json.dumps({"id": DUPLICATED_ID, **call, "payload": 1}).encode() + b"\n"
        )
        assert (await next_call_event(server))["payload"] == 1  # the first is in flight
        await caller.send_raw(
            json.dumps({"id": DUPLICATED_ID, **call, "payload": 2}).encode() + b"\n"
        )
        refused = await caller.frame()
        assert refused["id"] == DUPLICATED_ID
        assert refused["error"]["code"] == "conflict"
        assert "already in flight" in refused["error"]["message"]
        cancel = await caller.send("rpc_cancel", call=DUPLICATED_ID)
        answers = {}
        while len(answers) < 2:
            frame = await caller.frame()
            answers[frame["id"]] = frame
        assert answers[cancel]["ok"]
        assert answers[DUPLICATED_ID]["error"]["code"] == "cancelled"  # the first one
        told = await next_call_event(server)
        assert (told["kind"], told["reason"]) == ("rpc_cancelled", "cancelled")
