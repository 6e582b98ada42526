"""A program that closes its sending side after its requests gets them all run and answered
before the daemon closes the connection (`printf … | nc -N -U` works); one that closes the
whole connection (JSON lines or HTTP) has what it still had running cancelled."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import Node
from meshactors.control import client as control_client
from meshactors.control import http as http_module
from meshactors.daemon.services import Services
from tests.control.httptools import encode_request
from tests.daemon_tree import Connect
from tests.support import LineClient

KEYS = 100  # state writes sent in one go before the program's end of input
WAIT = 20.0  # seconds to get every answer (or every key stored)


async def added_network(connect: Any) -> LineClient:
    """A connection on which network `n` was added (its state needs no broker)."""
    client: LineClient = await connect()
    config = {"id": "n", "brokers": ["ws://127.0.0.1:9/v1"]}
    assert (await client.call("network_add", config=config))["ok"]
    return client


def state_sets(tag: str) -> bytes:
    """KEYS `state_set` lines writing `tag-<n>` = n, ids 0…KEYS-1."""
    return b"".join(
        json.dumps(
            {"id": n, "op": "state_set", "network": "n", "key": f"{tag}-{n}", "value": n}
        ).encode()
        + b"\n"
        for n in range(KEYS)
    )


async def stored(client: LineClient, tag: str) -> int:
    """How many `tag-` keys the network's state holds."""
    answer = await client.call("state_list", network="n", prefix=f"{tag}-", limit=500)
    return len(answer["data"]["entries"])


async def event_of(client: LineClient, kind: str) -> dict[str, Any]:
    """The next event of `kind` the connection receives (frames before it are skipped)."""
    while (frame := await client.frame()).get("kind") != kind:
        pass
    return frame


async def read_to_end(client: LineClient) -> list[dict[str, Any]]:
    """Every frame until the daemon closes the connection."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(WAIT):
        while True:
            try:
                frames.append(await client.frame())
            except EOFError:
                return frames


async def test_requests_sent_before_a_half_close_are_all_answered(connect: Any) -> None:
    other = await added_network(connect)
    client: LineClient = await connect()
    await client.send_raw(state_sets("half"))
    await client.stream.send_eof()
    frames = await read_to_end(client)
    assert sorted(frame["id"] for frame in frames if frame["ok"]) == list(range(KEYS))
    assert await stored(other, "half") == KEYS


async def test_a_last_line_without_its_newline_is_run(connect: Any) -> None:
    client: LineClient = await connect()
    await client.send_raw(b'{"id":1,"op":"status"}\n{"id":2,"op":"version"}')
    await client.stream.send_eof()
    frames = await read_to_end(client)
    assert sorted(frame["id"] for frame in frames if frame["ok"]) == [1, 2]


async def test_a_program_that_closes_after_its_end_of_input_has_its_calls_cancelled(
    daemon: Services, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_client, "DRAIN_TIMEOUT", math.inf)  # only the hang-up ends it
    server = await added_network(connect)
    assert (await server.call("rpc_register", network="n", method="never"))["ok"]
    caller: LineClient = await connect()
    own = daemon.identity.device_id
    await caller.send("rpc_call", network="n", peer=own, method="never", timeout_ms=600_000)
    with trio.fail_after(WAIT):
        inbound = await event_of(server, "rpc_inbound")
    await caller.stream.send_eof()
    await trio.testing.wait_all_tasks_blocked()  # the daemon read the end of input: it drains
    await caller.aclose()
    with trio.fail_after(WAIT):
        cancelled = await event_of(server, "rpc_cancelled")
    assert cancelled["request_id"] == inbound["request_id"]


async def test_an_http_caller_that_hangs_up_mid_call_has_it_cancelled_at_once(
    daemon: Services, connect: Any, http: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await added_network(connect)
    assert (await server.call("rpc_register", network="n", method="never"))["ok"]
    caller = await http()
    own = daemon.identity.device_id
    params = {"network": "n", "peer": own, "method": "never", "timeout_ms": 600_000}
    await caller.send(encode_request("POST", "/v1/rpc_call", json.dumps(params).encode()))
    with trio.fail_after(WAIT):
        inbound = await event_of(server, "rpc_inbound")
    control = daemon.tree.children["control"]
    (node,) = [
        node
        for node in control.children.values()
        if node.kind == "client" and node.figures is not None
        if node.figures()["protocol"] == "http"
    ]
    left = trio.Event()
    detach = Node.detach

    def detach_and_tell(gone: Node) -> None:
        detach(gone)
        if gone is node:
            left.set()

    monkeypatch.setattr(Node, "detach", detach_and_tell)
    await caller.stream.aclose()  # as `curl -m 2` giving up
    with trio.fail_after(WAIT):  # the hang-up is seen at the next HANGUP_CHECK poll
        cancelled = await event_of(server, "rpc_cancelled")
        await left.wait()  # and its client actor leaves
    assert cancelled["request_id"] == inbound["request_id"]


async def test_requests_pipelined_past_the_read_ahead_behind_a_call_are_answered_in_order(
    daemon: Services, connect: Any, http: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_READ_AHEAD the daemon stops reading while the call runs, and reads on once
    it is answered: nothing pipelined is lost or answered out of turn."""
    monkeypatch.setattr(http_module, "MAX_READ_AHEAD", 64)
    server = await added_network(connect)
    assert (await server.call("rpc_register", network="n", method="never"))["ok"]
    caller = await http()
    own = daemon.identity.device_id
    params = {"network": "n", "peer": own, "method": "never", "timeout_ms": 600_000}
    await caller.send(encode_request("POST", "/v1/rpc_call", json.dumps(params).encode()))
    with trio.fail_after(WAIT):
        inbound = await event_of(server, "rpc_inbound")
    for _ in range(8):  # ~ 40 bytes each: past 64 the daemon reads no more meanwhile
        await caller.send(encode_request("GET", "/v1/status"))
    assert (await server.call("rpc_respond", request_id=inbound["request_id"], payload=7))["ok"]
    with trio.fail_after(WAIT):
        answered = await caller.response()
        assert (answered.status, answered.json()["data"]["payload"]) == (200, 7)
        for _ in range(8):
            assert (await caller.response()).json()["data"]["client_id"]
