"""Fuzz a live daemon from an approved peer: generated JSON values (lone surrogates, huge
integers, NaN, deep nesting among ordinary ones) as channel payloads (single, and twice in a
retained run), RPC call payloads and answers and capability extras crash no actor, and the
peer stays active.

At least MIN_VALUES values go out in all: each example holds enough of them for the run's
FUZZ_EXAMPLES examples to reach it (one each past that)."""

from __future__ import annotations

import json
import math
from typing import Any

import trio
from hypothesis import strategies as st

from meshactors.wire.jsonlimits import check_json
from tests.fuzz.conftest import FUZZ_EXAMPLES, examples_of
from tests.fuzz.strategies import hostile_json
from tests.network.appclient import AppClient
from tests.network.conftest import NET, Mesh
from tests.network.rawpeer import approved_raw_peer

MIN_VALUES = 10_000
PER_EXAMPLE = max(1, math.ceil(MIN_VALUES * 1.2 / FUZZ_EXAMPLES))  # a margin for invalid draws
EXAMPLE_TIMEOUT = 60.0  # seconds one example's frames may take to be read: a hang guard only


def frames_for(index: int, value: Any) -> list[bytes]:
    """The frames carrying `value`, written as any peer could (NaN as NaN, "\\ud800" escaped)."""
    extra = value if isinstance(value, dict) else {"v": value}
    frames = [
        {"t": "chan", "channel": "fuzz", "payload": value},
        {"t": "chan_run", "channel": "fuzz", "payloads": [value, value], "retain": True},
        {
            "t": "rpc_call",
            "id": f"c{index}",
            "method": "fuzz",
            "payload": value,
            "binary": False,
            "stream": False,
            "timeout_ms": 1,
        },
        {"t": "rpc_result", "id": f"r{index}", "payload": value},
        {"t": "caps", "capabilities": {"tags": ["fuzz"], "extra": extra}},
    ]
    return [json.dumps(frame).encode() for frame in frames]


def passes(value: Any) -> bool:
    try:
        check_json(value)
    except ValueError:
        return False
    return True


async def test_generated_values_from_a_peer_crash_nothing(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    examples = await examples_of(st.lists(hostile_json, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    assert sum(map(len, examples)) >= MIN_VALUES

    b, raw = await approved_raw_peer(mesh, nursery)
    client = await AppClient.open(b.services.paths.socket, nursery)
    await client.call("channel_subscribe", network=NET, channel="fuzz")
    await client.call("rpc_register", network=NET, method="fuzz")

    index = 0
    for number, values in enumerate(examples):
        for value in values:
            for data in frames_for(index, value):
                await raw.send_raw(b.device_id, data)
            index += 1
        sentinel = {"sentinel": number}
        await raw.send_raw(b.device_id, frames_for(index, sentinel)[0])
        # frames of one peer are handled in order: the sentinel says the example's were read
        with trio.fail_after(EXAMPLE_TIMEOUT):
            message = await client.event("channel_inbound", payload=sentinel)
        received = [e["payload"] for e in client.events if e["kind"] == "channel_inbound"]
        client.events.clear()
        assert all(map(passes, received)), "a value no daemon can pass on reached a client"
        sent = iter([value for value in values for _ in range(3)])  # the chan, then the run
        # what arrived is what was sent, in order, less what was dropped
        assert all(any(value == payload for value in sent) for payload in received)
        assert message["from"] == raw.device_id

    seen = await b.peer(raw.device_id)
    assert seen is not None and seen["status"] == "active"
    assert seen["rejected_frames"] > 0
    assert b.crashes() == {}
