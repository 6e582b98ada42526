"""A frame from a peer holding a value the daemon cannot pass on (a lone surrogate, NaN, an
integer beyond 64 bits, deep nesting) is dropped where it is decoded and counted per peer,
never an actor crash."""

from __future__ import annotations

import json
from typing import Any

import trio

from meshactors.network.payload import Payload
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH
from tests.network.appclient import AppClient, network_children
from tests.network.conftest import NET, Daemon, Mesh, active_pair
from tests.network.rawpeer import approved_raw_peer


async def subscriber(daemon: Daemon, nursery: trio.Nursery, *channels: str) -> AppClient:
    client = await AppClient.open(daemon.services.paths.socket, nursery)
    for channel in channels:
        await client.call("channel_subscribe", network=NET, channel=channel)
    return client


async def test_a_lone_surrogate_sent_to_all_is_rejected_and_crashes_nothing(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await active_pair(mesh)
    reader = await subscriber(b, nursery, "news")
    channels = a.network().channels  # a's own sending path, as channel_send_all runs it
    await channels.send_all("news", [[Payload("\ud800")]], retain=False)  # chan
    await channels.send_all("news", [[Payload("ok"), Payload("x\udfff")]], retain=False)  # batch
    await channels.send_all(
        "news", [[Payload("ok"), Payload({"\ud800": 1})]], retain=False, separate=True
    )  # run
    await channels.send_all("news", [[Payload("after")]], retain=False)
    message = await reader.event("channel_inbound")
    assert (message["from"], message["payload"]) == (a.device_id, "after")
    seen = await b.peer(a)
    assert seen is not None
    assert (seen["status"], seen["rejected_frames"], seen["frames"]["bad_value"]) == (
        "active",
        3,
        3,
    )
    event = await b.wait_event("peer_frame_rejected", device_id=a.device_id)
    assert (event["reason"], event["count"], event["reasons"]) == ("bad_value", 1, {"bad_value": 1})
    assert b.crashes() == {}
    core = network_children(await reader.call("inspect"), NET)["core"]
    assert core["figures"]["rejected_frames"] == 3


async def test_a_retained_bad_value_is_rejected_at_every_reconnect(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    a, b = await active_pair(mesh)
    reader = await subscriber(b, nursery, "presence", "marks")
    channels = a.network().channels
    await channels.send_all("presence", [[Payload("\ud800")]], retain=True)
    await channels.send_all("marks", [[Payload("ok")]], retain=True)  # re-sent after the bad one
    assert (await reader.event("channel_inbound", channel="marks"))["payload"] == "ok"
    for reconnect in (1, 2):
        after = a.last_event_id
        await b.call("roster_deny", network=NET, device_id=a.device_id)
        await b.call("roster_approve", network=NET, device_id=a.device_id)
        await a.wait_status(b, "active", after=after)  # a re-sends its retained values now
        marked = await reader.event("channel_inbound", channel="marks")
        assert marked["payload"] == "ok"
        seen = await b.peer(a)
        assert seen is not None and seen["rejected_frames"] == 1 + reconnect
    assert [e for e in reader.events if e["kind"] == "channel_inbound"] == []
    assert b.crashes() == {}


def _frame(tag: str, **fields: Any) -> bytes:
    """A frame as a peer could write it: json.dumps says NaN and "\\ud800" as they are."""
    return json.dumps({"t": tag, **fields}).encode()


NESTED = json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)  # one level too deep in a frame
BAD_FRAMES = {
    "chan NaN": _frame("chan", channel="c", payload=float("nan")),
    "chan -Infinity": _frame("chan", channel="c", payload=[float("-inf")]),
    "chan overflow": b'{"t":"chan","channel":"c","payload":1e400}',
    "chan 2**64": _frame("chan", channel="c", payload=2**64),
    "chan -2**63-1": _frame("chan", channel="c", payload={"n": -(2**63) - 1}),
    "chan surrogate key": _frame("chan", channel="c", payload={"\ud800": 1}),
    "chan too deep": _frame("chan", channel="c", payload=NESTED),
    "chan far too deep": b'{"t":"chan","channel":"c","payload":' + b"[" * 5000 + b"]" * 5000 + b"}",
    "chan retained": _frame("chan", channel="c", payload="\ud800", retain=True),
    "chan_batch": _frame("chan_batch", channel="c", payloads=[1, "\udc00"], retain=True),
    "chan_batch empty (malformed)": _frame("chan_batch", channel="c", payloads=[], retain=True),
    "chan_run": _frame("chan_run", channel="c", payloads=["ok", 2**70], binary=False),
    "rpc_call": _frame(
        "rpc_call", id="1", method="m", payload="\ud800", binary=False, stream=False, timeout_ms=9
    ),
    "rpc_call timeout": _frame(
        "rpc_call", id="2", method="m", payload=1, binary=False, stream=False, timeout_ms=2**64
    ),
    "rpc_result": _frame("rpc_result", id="1", payload=float("inf")),
    "rpc_result error": _frame("rpc_result", id="1", error={"code": "x", "message": "\ud800"}),
    "rpc_chunk": _frame("rpc_chunk", id="1", payload=2**64),
    "rpc_end": _frame("rpc_end", id="1", error={"code": "\udfff", "message": "m"}),
    "caps": _frame("caps", capabilities={"extra": {"k": "\ud800"}}),
    "caps deep": _frame("caps", capabilities={"extra": {"k": NESTED}}),
    "profile": _frame("profile", profile={"display_name": "\ud800"}),
    "msg": _frame(
        "msg",
        ref="r1",
        client_message_id="c1",
        message="x\ud800",
        meta=None,
        priority="normal",
        reply_to_id=None,
        sent_at=1,
    ),
    "msg sent_at": _frame(
        "msg",
        ref="r2",
        client_message_id="c2",
        message="x",
        meta={"n": float("nan")},
        priority="normal",
        reply_to_id=None,
        sent_at=2**70,
    ),
    "msg reply_to_id (malformed)": _frame(
        "msg",
        ref="r3",
        client_message_id="c3",
        message="x",
        meta=None,
        priority="normal",
        reply_to_id="r" * 129,  # longer than a send may give it
        sent_at=3,
    ),
    "ping": _frame("ping", token=2**64),
}


async def test_every_payload_path_drops_what_no_daemon_can_pass_on(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    b, raw = await approved_raw_peer(mesh, nursery)
    reader = await subscriber(b, nursery, "c")
    await reader.call("rpc_register", network=NET, method="m")
    for data in BAD_FRAMES.values():
        await raw.send_raw(b.device_id, data)
    await raw.send_raw(b.device_id, _frame("chan", channel="c", payload="sentinel"))
    message = await reader.event("channel_inbound")
    assert message["payload"] == "sentinel"  # nothing before it reached the subscriber
    assert [e["kind"] for e in reader.events] == []
    seen = await b.peer(raw.device_id)
    assert seen is not None and seen["status"] == "active"
    assert seen["rejected_frames"] == len(BAD_FRAMES)
    too_deep = sum(1 for name in BAD_FRAMES if "deep" in name)
    assert seen["frames"]["too_deep"] == too_deep
    malformed = sum(1 for name in BAD_FRAMES if "malformed" in name)
    assert seen["frames"]["bad_value"] == len(BAD_FRAMES) - too_deep - malformed
    assert seen["frames"]["malformed"] == malformed
    assert b.crashes() == {}
