"""A connection's claims and subscriptions take effect in the order it sent them: a subscribe
and an unsubscribe of one channel (a register and an unregister of one method) pipelined
together never run the other way round, while requests for other names run meanwhile."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from meshactors.daemon.services import Services
from tests.network.conftest import NET, WAIT
from tests.ops.test_connection_close import held, join, ok
from tests.support import LineClient, hold_op

Connect = Callable[[], Awaitable[LineClient]]

PAIRS = 40  # pipelined pairs of each order; each ran the wrong way round half the time
CHANNEL = {"network": NET, "channel": "news"}
METHOD = {"network": NET, "method": "m"}


async def pipelined(client: LineClient, *requests: tuple[str, dict[str, Any]]) -> list[Any]:
    """Send `requests` in one write (read by the daemon together) and return their answers'
    data, in request order."""
    first = client.next_id
    client.next_id += len(requests)
    lines = [
        json.dumps({"id": first + n, "op": op, **params}).encode() + b"\n"
        for n, (op, params) in enumerate(requests)
    ]
    await client.send_raw(b"".join(lines))
    answers: dict[int, dict[str, Any]] = {}
    with trio.fail_after(WAIT):
        while len(answers) < len(requests):
            frame = await client.frame()
            if isinstance(frame.get("id"), int) and frame["id"] >= first:
                answers[frame["id"]] = frame
    assert all(answer["ok"] for answer in answers.values()), answers
    return [answers[first + n]["data"] for n in range(len(requests))]


async def test_pipelined_subscribes_and_unsubscribes_end_as_the_last_one_sent(
    daemon: Services, connect: Connect
) -> None:
    app = await connect()
    await join(app, NET)
    await ok(app, "channel_subscribe", **CHANNEL)
    for _ in range(PAIRS):
        await pipelined(app, ("channel_unsubscribe", CHANNEL), ("channel_subscribe", CHANNEL))
        assert await ok(app, "channel_unsubscribe", **CHANNEL) == {"unsubscribed": True}
        await pipelined(app, ("channel_subscribe", CHANNEL), ("channel_unsubscribe", CHANNEL))
        assert await ok(app, "channel_unsubscribe", **CHANNEL) == {"unsubscribed": False}
        await ok(app, "channel_subscribe", **CHANNEL)
    await ok(app, "channel_unsubscribe", **CHANNEL)
    assert await held(app, NET) == ({}, [])  # no pump left running for nobody


async def test_pipelined_registers_and_unregisters_end_as_the_last_one_sent(
    daemon: Services, connect: Connect
) -> None:
    app = await connect()
    await join(app, NET)
    await ok(app, "rpc_register", **METHOD)
    for _ in range(PAIRS):
        await pipelined(app, ("rpc_unregister", METHOD), ("rpc_register", METHOD))
        assert await ok(app, "rpc_unregister", **METHOD) == {"released": True}
        await pipelined(app, ("rpc_register", METHOD), ("rpc_unregister", METHOD))
        assert await ok(app, "rpc_unregister", **METHOD) == {"released": False}
        await ok(app, "rpc_register", **METHOD)
    await ok(app, "rpc_unregister", **METHOD)
    assert await held(app, NET) == ({}, [])


async def test_a_subscribe_waits_for_the_unsubscribe_before_it_but_not_for_others(
    daemon: Services, connect: Connect
) -> None:
    app = await connect()
    await join(app, NET)
    await ok(app, "channel_subscribe", **CHANNEL)
    hold = hold_op(daemon, "channel_unsubscribe")
    unsubscribe = await app.send("channel_unsubscribe", **CHANNEL)
    with trio.fail_after(WAIT):
        await hold.entered.wait()
    subscribe = await app.send("channel_subscribe", **CHANNEL)
    other = await app.send("channel_subscribe", network=NET, channel="weather")
    with trio.fail_after(WAIT):  # another channel's subscribe is answered meanwhile
        assert (await app.frame())["id"] == other
    hold.go.set()
    with trio.fail_after(WAIT):
        answered = {(await app.frame())["id"] for _ in range(2)}
    assert answered == {unsubscribe, subscribe}
    assert await ok(app, "channel_unsubscribe", **CHANNEL) == {"unsubscribed": True}
