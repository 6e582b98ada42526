"""RPC between two daemons through a broker: claims, calls, streams, every error code."""

from __future__ import annotations

import base64
from typing import Any

import attrs
import pytest
import trio

from meshactors.network.app_frames import MAX_ERROR_CHARS, RpcCall
from meshactors.network.payload import MAX_PAYLOAD_BYTES
from meshactors.network.rpc import MAX_TIMEOUT_MS
from tests.network.appclient import AppClient, network_children
from tests.network.conftest import NET, Daemon, Mesh, OpFailed, active_pair

STREAM_CHUNKS = 10_000


@attrs.frozen
class Pair:
    """Daemons a (caller) and b (server), both active, each with a client."""

    a: Daemon
    b: Daemon
    caller: AppClient
    server: AppClient


@pytest.fixture
async def pair(mesh: Mesh, nursery: trio.Nursery) -> Pair:
    a, b = await active_pair(mesh)
    caller = await AppClient.open(a.services.paths.socket, nursery)
    server = await AppClient.open(b.services.paths.socket, nursery)
    return Pair(a, b, caller, server)


async def serve_once(server: AppClient, method: str, answer: Any) -> dict[str, Any]:
    """Wait for one inbound call of `method` and answer it with `answer` as the payload."""
    inbound = await server.event("rpc_inbound", method=method)
    await server.call("rpc_respond", request_id=inbound["request_id"], payload=answer)
    return inbound


async def test_a_call_reaches_the_owner_and_its_answer_comes_back(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="echo")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_once, pair.server, "echo", {"hello": "back"})
        answer = await pair.caller.call(
            "rpc_call", network=NET, peer=pair.b.device_id, method="echo", payload=[1, "two"]
        )
    assert answer == {"payload": {"hello": "back"}}


async def test_the_inbound_event_names_caller_method_and_payload(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="echo")
    call_id = await pair.caller.send(
        "rpc_call", network=NET, peer=pair.b.device_id, method="echo", payload={"x": 1}
    )
    inbound = await pair.server.event("rpc_inbound")
    assert inbound["network"] == NET
    assert inbound["from"] == pair.a.device_id
    assert inbound["method"] == "echo"
    assert inbound["payload"] == {"x": 1}
    assert inbound["streaming"] is False
    assert len(inbound["request_id"]) >= 20
    await pair.server.call("rpc_respond", request_id=inbound["request_id"], payload=None)
    assert await pair.caller.answer(call_id) == {"payload": None}


async def test_a_lone_surrogate_in_a_peers_call_is_dropped_and_restarts_nothing(pair: Pair) -> None:
    """JSON may carry "\\ud800" though UTF-8 cannot: a call holding one is dropped where the
    receiving daemon decodes it and counted; the next call is served as usual."""
    await pair.server.call("rpc_register", network=NET, method="echo")
    odd = RpcCall("odd", "echo", "x\ud800y", binary=False, stream=False, timeout_ms=1000)
    await pair.a.network().send_to_peer(pair.b.device_id, odd)  # past a's own op checks
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_once, pair.server, "echo", "fine")
        answer = await pair.caller.call(
            "rpc_call", network=NET, peer=pair.b.device_id, method="echo", payload="fine"
        )
    assert answer == {"payload": "fine"}
    assert [event for event in pair.server.events if event["kind"] == "rpc_inbound"] == []
    seen = await pair.b.peer(pair.a)
    assert seen is not None and seen["rejected_frames"] == 1
    assert pair.a.crashes() == pair.b.crashes() == {}


@pytest.mark.parametrize(
    ("asked", "applied"), [(-5, 1), (0, 1), (2**63 - 1, MAX_TIMEOUT_MS), (1234, 1234)]
)
async def test_the_served_program_is_told_the_deadline_its_daemon_applies(
    pair: Pair, asked: int, applied: int
) -> None:
    """A peer's call may ask for any deadline: the serving daemon keeps it within
    1..MAX_TIMEOUT_MS, and the program it hands the call to is told that, not the raw ask."""
    await pair.server.call("rpc_register", network=NET, method="echo")
    call = RpcCall("r1", "echo", None, binary=False, stream=False, timeout_ms=asked)
    await pair.a.network().send_to_peer(pair.b.device_id, call)  # past a's own op checks
    inbound = await pair.server.event("rpc_inbound", method="echo")
    assert inbound["timeout_ms"] == applied


async def test_binary_payloads_travel_as_base64(pair: Pair) -> None:
    blob = base64.b64encode(bytes(range(256))).decode()
    await pair.server.call("rpc_register", network=NET, method="blob")
    call_id = await pair.caller.send(
        "rpc_call", network=NET, peer=pair.b.device_id, method="blob", payload_b64=blob
    )
    inbound = await pair.server.event("rpc_inbound")
    assert inbound["payload_b64"] == blob and "payload" not in inbound
    await pair.server.call("rpc_respond", request_id=inbound["request_id"], payload_b64=blob)
    assert await pair.caller.answer(call_id) == {"payload_b64": blob}


async def test_the_last_claim_wins_and_the_displaced_owner_is_told(
    pair: Pair, nursery: trio.Nursery
) -> None:
    second = await AppClient.open(pair.b.services.paths.socket, nursery)
    await pair.server.call("rpc_register", network=NET, method="m")
    taken = await second.call("rpc_register", network=NET, method="m")
    assert taken["displaced"] is not None
    displaced = await pair.server.event("handler_displaced")
    assert displaced["network"] == NET and displaced["method"] == "m"
    assert displaced["by"] == (await second.call("status"))["client_id"]
    async with trio.open_nursery() as inner:
        inner.start_soon(serve_once, second, "m", "from the second")
        answer = await pair.caller.call("rpc_call", network=NET, peer=pair.b.device_id, method="m")
    assert answer["payload"] == "from the second"
    assert not [e for e in pair.server.events if e["kind"] == "rpc_inbound"]


async def test_removing_the_network_tells_each_owner_its_claim_ended(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="m1")
    await pair.server.call("rpc_register", network=NET, method="m2")
    await pair.server.call("network_remove", network=NET)
    ended = [await pair.server.event("handler_displaced", method=m) for m in ("m1", "m2")]
    assert [(e["network"], e["by"]) for e in ended] == [(NET, None), (NET, None)]


async def test_unregister_leaves_no_handler(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="m")
    assert await pair.server.call("rpc_unregister", network=NET, method="m") == {"released": True}
    assert await pair.server.call("rpc_unregister", network=NET, method="m") == {"released": False}
    with pytest.raises(OpFailed) as failure:
        await pair.caller.call("rpc_call", network=NET, peer=pair.b.device_id, method="m")
    assert failure.value.code == "no_handler"
    assert f"no one serves 'm' on b ({pair.b.device_id[:12]})" in str(failure.value)


async def test_a_method_called_the_other_way_than_served_is_no_handler_saying_how(
    pair: Pair,
) -> None:
    await pair.server.call("rpc_register", network=NET, method="s", streaming=True)
    await pair.server.call("rpc_register", network=NET, method="one")
    on = f"on b ({pair.b.device_id[:12]})"
    with pytest.raises(OpFailed) as failure:
        await pair.caller.call("rpc_call", network=NET, peer=pair.b.device_id, method="s")
    assert failure.value.code == "no_handler"
    said = f"'s' is a streaming method {on}: call it as a stream (meshactors rpc call --stream)"
    assert said in str(failure.value)
    started = await pair.caller.call(
        "rpc_call_stream", network=NET, peer=pair.b.device_id, method="one"
    )
    ended = await pair.caller.event("rpc_call_stream_end", request_id=started["request_id"])
    assert ended["error"]["code"] == "no_handler"
    said = f"'one' is not a streaming method {on}: call it once (meshactors rpc call, no --stream)"
    assert ended["error"]["message"] == said


async def test_calls_to_unknown_or_inactive_peers_fail_at_once(mesh: Mesh, pair: Pair) -> None:
    stranger = await mesh.daemon("c")
    await stranger.join(mesh.url)
    await pair.a.wait_event("peer_pending", device_id=stranger.device_id)
    with pytest.raises(OpFailed) as inactive:
        await pair.caller.call("rpc_call", network=NET, peer=stranger.device_id, method="m")
    assert inactive.value.code == "peer_not_active"
    with pytest.raises(OpFailed) as unknown:
        await pair.caller.call("rpc_call", network=NET, peer="x" * 52, method="m")
    assert unknown.value.code == "no_such_peer"
    with pytest.raises(OpFailed) as no_network:
        await pair.caller.call("rpc_call", network="nope", peer=pair.b.device_id, method="m")
    assert no_network.value.code == "no_such_network"


async def test_a_call_times_out_at_its_deadline_and_the_server_hears_of_it(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="slow")
    with trio.fail_after(5):
        with pytest.raises(OpFailed) as failure:
            await pair.caller.call(
                "rpc_call", network=NET, peer=pair.b.device_id, method="slow", timeout_ms=300
            )
    assert failure.value.code == "timeout"
    inbound = await pair.server.event("rpc_inbound")
    cancelled = await pair.server.event("rpc_cancelled", request_id=inbound["request_id"])
    assert cancelled["reason"] == "timeout"
    with pytest.raises(OpFailed) as late:
        await pair.server.call("rpc_respond", request_id=inbound["request_id"], payload=1)
    assert late.value.code == "unknown_request"


async def test_a_short_deadline_made_after_a_long_one_still_times_out_on_time(
    pair: Pair, nursery: trio.Nursery
) -> None:
    await pair.server.call("rpc_register", network=NET, method="slow")
    long_call = trio.Event()

    async def call_long() -> None:
        with pytest.raises(OpFailed):
            await pair.caller.call(
                "rpc_call", network=NET, peer=pair.b.device_id, method="slow", timeout_ms=60_000
            )
        long_call.set()

    nursery.start_soon(call_long)
    await pair.server.event("rpc_inbound")  # the long call is in flight
    with trio.fail_after(5):  # the expirer, asleep until 60 s from now, wakes for this one
        with pytest.raises(OpFailed) as failure:
            await pair.caller.call(
                "rpc_call", network=NET, peer=pair.b.device_id, method="slow", timeout_ms=300
            )
    assert failure.value.code == "timeout"
    assert not long_call.is_set()


@pytest.mark.parametrize("timeout_ms", [0, -1, MAX_TIMEOUT_MS + 1])
async def test_a_deadline_outside_the_limits_is_invalid(pair: Pair, timeout_ms: int) -> None:
    with pytest.raises(OpFailed) as failure:
        await pair.caller.call(
            "rpc_call", network=NET, peer=pair.b.device_id, method="m", timeout_ms=timeout_ms
        )
    assert failure.value.code == "invalid_params"


async def test_an_error_answer_reaches_the_caller_as_remote_error(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="bad")
    call_id = await pair.caller.send("rpc_call", network=NET, peer=pair.b.device_id, method="bad")
    inbound = await pair.server.event("rpc_inbound")
    await pair.server.call("rpc_respond", request_id=inbound["request_id"], error="no such thing")
    with pytest.raises(OpFailed) as failure:
        await pair.caller.answer(call_id)
    assert failure.value.code == "remote_error"
    assert "no such thing" in str(failure.value)


async def test_an_error_message_too_long_for_a_peer_is_refused_and_the_call_stays_open(
    pair: Pair,
) -> None:
    await pair.server.call("rpc_register", network=NET, method="bad")
    call_id = await pair.caller.send("rpc_call", network=NET, peer=pair.b.device_id, method="bad")
    inbound = await pair.server.event("rpc_inbound")
    too_long = "e" * (MAX_ERROR_CHARS + 1)
    with pytest.raises(OpFailed) as refused:
        await pair.server.call("rpc_respond", request_id=inbound["request_id"], error=too_long)
    assert refused.value.code == "invalid_params"
    await pair.server.call("rpc_respond", request_id=inbound["request_id"], error="e" * 100)
    with pytest.raises(OpFailed) as failure:
        await pair.caller.answer(call_id)
    assert failure.value.code == "remote_error"


async def test_answering_an_unknown_or_finished_call_is_unknown_request(pair: Pair) -> None:
    with pytest.raises(OpFailed) as unknown:
        await pair.server.call("rpc_respond", request_id="nope", payload=1)
    assert unknown.value.code == "unknown_request"
    await pair.server.call("rpc_register", network=NET, method="once")
    call_id = await pair.caller.send("rpc_call", network=NET, peer=pair.b.device_id, method="once")
    inbound = await pair.server.event("rpc_inbound")
    await pair.server.call("rpc_respond", request_id=inbound["request_id"], payload=1)
    await pair.caller.answer(call_id)
    with pytest.raises(OpFailed) as twice:
        await pair.server.call("rpc_respond", request_id=inbound["request_id"], payload=2)
    assert twice.value.code == "unknown_request"


async def test_another_connection_cannot_answer_or_cancel_a_call(
    pair: Pair, nursery: trio.Nursery
) -> None:
    other = await AppClient.open(pair.b.services.paths.socket, nursery)
    await pair.server.call("rpc_register", network=NET, method="mine")
    await pair.caller.send("rpc_call", network=NET, peer=pair.b.device_id, method="mine")
    inbound = await pair.server.event("rpc_inbound")
    with pytest.raises(OpFailed) as failure:
        await other.call("rpc_respond", request_id=inbound["request_id"], payload=1)
    assert failure.value.code == "unknown_request"


async def test_payloads_over_the_cap_are_refused(pair: Pair) -> None:
    big = "x" * MAX_PAYLOAD_BYTES
    with pytest.raises(OpFailed) as failure:
        await pair.caller.call(
            "rpc_call", network=NET, peer=pair.b.device_id, method="m", payload=big
        )
    assert failure.value.code == "payload_too_large"
    with pytest.raises(OpFailed) as both:
        await pair.caller.call(
            "rpc_call",
            network=NET,
            peer=pair.b.device_id,
            method="m",
            payload=1,
            payload_b64="AA==",
        )
    assert both.value.code == "invalid_params"


async def test_a_server_that_disconnects_mid_call_answers_handler_gone_at_once(
    pair: Pair, nursery: trio.Nursery
) -> None:
    leaving = await AppClient.open(pair.b.services.paths.socket, nursery)
    await leaving.call("rpc_register", network=NET, method="m")
    await leaving.call("channel_subscribe", network=NET, channel="news")
    call_id = await pair.caller.send(
        "rpc_call", network=NET, peer=pair.b.device_id, method="m", timeout_ms=MAX_TIMEOUT_MS
    )
    await leaving.event("rpc_inbound")
    await leaving.aclose()
    with trio.fail_after(5):
        with pytest.raises(OpFailed) as failure:
            await pair.caller.answer(call_id)
    assert failure.value.code == "handler_gone"
    children = network_children(await pair.server.call("inspect"), NET)
    assert children["core"]["figures"]["rpc"]["claims"] == {}
    assert children["core"]["figures"]["rpc"]["inbound"] == 0
    assert not [name for name in children if name.startswith("channel ")]


async def stream_chunks(server: AppClient, count: int, error: str | None = None) -> None:
    """Serve one streaming call with `count` chunks 0..count-1, each after the last was taken
    (chunk order is the order of their answers), then end it."""
    inbound = await server.event("rpc_inbound")
    request_id = inbound["request_id"]
    for n in range(count):
        await server.call("rpc_stream_chunk", request_id=request_id, payload=n)
    end: dict[str, Any] = {} if error is None else {"error": error}
    await server.call("rpc_stream_end", request_id=request_id, **end)


async def test_a_stream_of_ten_thousand_chunks_arrives_complete_and_in_order(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="count", streaming=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_chunks, pair.server, STREAM_CHUNKS)
        started = await pair.caller.call(
            "rpc_call_stream", network=NET, peer=pair.b.device_id, method="count"
        )
        end = await pair.caller.event(
            "rpc_call_stream_end", timeout=60, request_id=started["request_id"]
        )
    chunks = [e for e in pair.caller.events if e["kind"] == "rpc_call_stream_chunk"]
    assert [c["payload"] for c in chunks] == list(range(STREAM_CHUNKS))
    assert {c["request_id"] for c in chunks} == {started["request_id"]}
    assert "error" not in end


async def test_an_error_at_stream_end_reaches_the_caller(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="count", streaming=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_chunks, pair.server, 3, "disk on fire")
        started = await pair.caller.call(
            "rpc_call_stream", network=NET, peer=pair.b.device_id, method="count"
        )
        end = await pair.caller.event("rpc_call_stream_end", request_id=started["request_id"])
    assert end["error"]["code"] == "remote_error"
    assert end["error"]["message"] == "disk on fire"
    assert len([e for e in pair.caller.events if e["kind"] == "rpc_call_stream_chunk"]) == 3


async def test_cancelling_a_stream_tells_the_serving_side(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="forever", streaming=True)
    started = await pair.caller.call(
        "rpc_call_stream", network=NET, peer=pair.b.device_id, method="forever"
    )
    inbound = await pair.server.event("rpc_inbound")
    await pair.server.call("rpc_stream_chunk", request_id=inbound["request_id"], payload="one")
    await pair.caller.event("rpc_call_stream_chunk", payload="one")
    assert await pair.caller.call("rpc_cancel", request_id=started["request_id"]) == {
        "cancelled": True
    }
    end = await pair.caller.event("rpc_call_stream_end")
    assert end["error"]["code"] == "cancelled"
    told = await pair.server.event("rpc_cancelled", request_id=inbound["request_id"])
    assert told["reason"] == "cancelled"
    with pytest.raises(OpFailed) as failure:
        await pair.server.call("rpc_stream_chunk", request_id=inbound["request_id"], payload=2)
    assert failure.value.code in ("cancelled", "unknown_request")
    with pytest.raises(OpFailed) as again:
        await pair.caller.call("rpc_cancel", request_id=started["request_id"])
    assert again.value.code == "unknown_request"


async def test_a_stream_times_out_at_its_deadline(pair: Pair) -> None:
    await pair.server.call("rpc_register", network=NET, method="stuck", streaming=True)
    started = await pair.caller.call(
        "rpc_call_stream", network=NET, peer=pair.b.device_id, method="stuck", timeout_ms=300
    )
    end = await pair.caller.event("rpc_call_stream_end", timeout=5)
    assert end["request_id"] == started["request_id"]
    assert end["error"]["code"] == "timeout"


async def test_a_caller_that_disconnects_cancels_its_calls_on_the_serving_side(
    pair: Pair, nursery: trio.Nursery
) -> None:
    leaving = await AppClient.open(pair.a.services.paths.socket, nursery)
    await pair.server.call("rpc_register", network=NET, method="m")
    await leaving.send("rpc_call", network=NET, peer=pair.b.device_id, method="m")
    inbound = await pair.server.event("rpc_inbound")
    await leaving.aclose()
    told = await pair.server.event("rpc_cancelled", request_id=inbound["request_id"])
    assert told["reason"] == "cancelled"
