"""The client's subscribes and claims run one at a time per channel or method, in the order the
program asked: a reader that enters as the last one leaves is subscribed at the end; a reader
that joins a subscribe in flight starts once the daemon subscribed, and fails as it fails; an
unserve while the serve is in flight leaves the method unclaimed; a subscribe given up after it
was sent, or a claim answered `timeout`, is undone all the same, and so is one a reconnect's
replay restored as its reader left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.client import ClientError, MeshClient, RequestContext
from meshactors.client._conn import Connection
from meshactors.wire.ipc import ErrorCode, OpError
from tests.client.conftest import LocalDaemon
from tests.client.fakedaemon import fake_daemon
from tests.network.appclient import network_children
from tests.support import hold_op

LAN = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself
STEP = 10  # seconds any awaited step may take before the test fails


@attrs.define
class HeldCall:
    """Every call of `op` the client makes waits for `go` before it is sent; then it fails with
    `error` if one is given, else it runs. `answered` counts those the daemon answered ok."""

    op: str
    error: ClientError | None = None
    entered: trio.Event = attrs.field(factory=trio.Event)
    go: trio.Event = attrs.field(factory=trio.Event)
    answered: int = 0


@pytest.fixture
def hold_call(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a HeldCall on the client's connections (`hold_call(op, error=None)`)."""
    real = Connection.call

    def install(op: str, error: ClientError | None = None) -> HeldCall:
        held = HeldCall(op, error)

        async def call(conn: Connection, name: str, params: dict[str, Any], timeout: float) -> Any:
            if name != held.op:
                return await real(conn, name, params, timeout)
            held.entered.set()
            await held.go.wait()
            if held.error is not None:
                raise held.error
            answer = await real(conn, name, params, timeout)
            held.answered += 1
            return answer

        monkeypatch.setattr(Connection, "call", call)
        return held

    return install


async def daemon_holds(client: MeshClient) -> tuple[dict[str, str], list[str]]:
    """What the daemon holds in `lan`: method claims (method → client id) and channel pumps."""
    children = network_children(await client.inspect(), "lan")
    pumps = [name for name in children if name.startswith("channel ")]
    return children["core"]["figures"]["rpc"]["claims"], pumps


async def echo(payload: Any, ctx: RequestContext) -> Any:
    return payload


async def test_a_reader_entering_as_the_last_one_leaves_is_subscribed(
    running: LocalDaemon, hold_call: Any
) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([LAN])
        first_in, leave, entered = trio.Event(), trio.Event(), trio.Event()

        async def first_reader() -> None:
            async with client.subscribe("lan", "news"):
                first_in.set()
                await leave.wait()

        async def second_reader() -> None:
            async with client.subscribe("lan", "news"):
                entered.set()
                await trio.sleep_forever()

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first_reader)
                await first_in.wait()
                held = hold_call("channel_unsubscribe")
                leave.set()  # its unsubscribe is held before it is sent
                await held.entered.wait()
                nursery.start_soon(second_reader)
                await trio.testing.wait_all_tasks_blocked()
                held.go.set()
                await entered.wait()
                assert held.answered == 1  # the second reader entered after the unsubscribe
                assert await daemon_holds(client) == ({}, ["channel news"])
                nursery.cancel_scope.cancel()


async def test_a_reader_joining_a_subscribe_in_flight_starts_once_it_is_done(
    running: LocalDaemon, hold_call: Any
) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([LAN])
        held = hold_call("channel_subscribe")
        answered_at_entry: list[int] = []
        both_in = trio.Event()

        async def reader() -> None:
            async with client.subscribe("lan", "news"):
                answered_at_entry.append(held.answered)
                if len(answered_at_entry) == 2:
                    both_in.set()
                await trio.sleep_forever()

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await held.entered.wait()
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                held.go.set()
                await both_in.wait()
                nursery.cancel_scope.cancel()
        assert answered_at_entry == [1, 1]  # both after the one subscribe the daemon answered


async def test_a_reader_joining_a_subscribe_that_fails_fails_and_wants_nothing(
    running: LocalDaemon, hold_call: Any
) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([LAN])
        held = hold_call("channel_subscribe", ClientError("conflict", "at most 256 channels"))
        outcomes: list[str] = []

        async def reader() -> None:
            try:
                async with client.subscribe("lan", "news"):
                    outcomes.append("entered")
            except ClientError as error:
                outcomes.append(error.code)

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await held.entered.wait()
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                held.go.set()
        assert outcomes == ["conflict", "conflict"]
        assert client._link.desired.channels == {}
        assert await daemon_holds(client) == ({}, [])


async def test_an_unserve_while_the_serve_is_in_flight_leaves_the_method_unclaimed(
    running: LocalDaemon, hold_call: Any
) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([LAN])
        held = hold_call("rpc_register")
        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.serve, "lan", "echo", echo)
                await held.entered.wait()
                nursery.start_soon(client.unserve, "lan", "echo")
                await trio.testing.wait_all_tasks_blocked()
                held.go.set()
        assert await daemon_holds(client) == ({}, [])


async def test_a_subscribe_given_up_after_it_was_sent_is_undone_when_the_reader_leaves(
    running: LocalDaemon,
) -> None:
    assert running.services is not None
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([LAN])
        held = hold_op(running.services, "channel_subscribe")
        giving_up = trio.CancelScope()

        async def reader() -> None:
            with giving_up:
                async with client.subscribe("lan", "news"):
                    await trio.sleep_forever()

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await held.entered.wait()  # the daemon has the subscribe
                giving_up.cancel()
                held.go.set()  # and carries it out after the reader left
            await held.finished.wait()
        assert await daemon_holds(client) == ({}, [])


async def test_a_claim_the_daemon_made_though_it_answered_timeout_is_released(
    running: LocalDaemon,
) -> None:
    assert running.services is not None
    ops = running.services.ops.ops
    op = ops["rpc_register"]

    async def made_late(session: Any, params: Any) -> Any:
        """Register, then answer as an ask to a core too slow to answer in time does."""
        await op.handler(session, params)
        raise OpError(ErrorCode.TIMEOUT, "core did not answer in time")

    ops[op.name] = attrs.evolve(op, handler=made_late)
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([LAN])
        with pytest.raises(ClientError) as failed, trio.fail_after(STEP):
            await client.serve("lan", "echo", echo)
        assert failed.value.code == "timeout"
        assert await daemon_holds(client) == ({}, [])
        assert client._link.desired.claims == {}


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        (["news"], ["channel_subscribe", "channel_unsubscribe"]),  # restored, then undone
        (["weather", "news"], ["channel_subscribe"]),  # weather's: news gone before its turn
    ],
)
async def test_a_reader_leaving_while_its_subscription_is_replayed_is_unsubscribed(
    tmp_path: Path, channels: list[str], expected: list[str]
) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        first = await daemon.next_session()
        leave, left, stay = trio.Event(), trio.Event(), trio.Event()

        async def reader(channel: str, entered: trio.Event) -> None:
            async with client.subscribe("lan", channel):
                entered.set()
                await (leave if channel == "news" else stay).wait()
            left.set()

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                for channel in channels:  # replayed in this order
                    entered = trio.Event()
                    nursery.start_soon(reader, channel, entered)
                    await entered.wait()
                answer = daemon.held["channel_subscribe"] = trio.Event()
                await first.hang_up()
                second = await daemon.next_session()
                await second.wait_op("channel_subscribe")  # the replay's first: answer held
                leave.set()  # news's reader leaves, with no connection to release on
                await left.wait()
                answer.set()
                await client.status()  # answered once the new connection carries the state
                asked = list(second.ops)
                nursery.cancel_scope.cancel()
        assert asked == ["events_subscribe", *expected, "status"]
