"""Admissions across brokers whose Redis answer comes late: after the hello went on without
it, or after presence events that overtook it. The link holds chosen answers (Redis has
already written them) until the test lets them go."""

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from meshactors.broker import cluster
from meshactors.broker.cluster_messages import Admit, AdmitResult, Control, Depart
from meshactors.broker.cluster_wire import PresenceEntry
from meshactors.broker.limits import BrokerConfig
from meshactors.broker.server import Broker
from meshactors.clock import wall_ms
from meshactors.network.link import WELCOME_TIMEOUT
from meshactors.wire.broker import VerifiedHello, encode_batch, verify_hello
from scripts.benchlib.redisserver import RedisServer
from tests.broker.support import (
    WAIT_S,
    StopWatchedBroker,
    closed_with,
    connect,
    drained_to_close,
    hello,
    joined,
    next_batch,
    next_text,
    serve_until_stopped,
)
from tests.broker_cluster.test_cluster import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    _hello_and_welcome,
    _redis_command,
    did,
    joins,
    pk,
    start,
    state_is,
    url,
)

ADMISSION_S = 1.0  # the admission timeout of a broker whose admissions are answered late


@attrs.define
class Hold:
    """One device's admission held by the link: `reached` once Redis wrote it (or, `before`,
    once the link took it, Redis not asked yet); answered (or asked) once `release` is set.
    With `leave`, its Depart is held instead, Redis not asked yet."""

    before: bool = False
    leave: bool = False
    reached: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Hold]]:
    """Device id -> Hold: the link answers that device's admission once released."""
    held: dict[str, Hold] = {}

    def hold_of(device_id: str, *, leave: bool) -> Hold | None:
        hold = held.get(device_id)
        return hold if hold is not None and hold.leave == leave else None

    class HoldingLink(cluster.ClusterLink):
        async def _depart(self, redis: Any, depart: Depart) -> None:
            hold = hold_of(depart.device_id, leave=True)
            if hold is not None:
                hold.reached.set()
                await hold.release.wait()
            await super()._depart(redis, depart)

        async def _admit(self, redis: Any, admit: Admit) -> AdmitResult:
            hold = hold_of(admit.hello.device_id, leave=False)
            if hold is not None and hold.before:
                hold.reached.set()
                await hold.release.wait()
            result = await super()._admit(redis, admit)
            if hold is not None and not hold.before:
                hold.reached.set()
                await hold.release.wait()
            return result

    monkeypatch.setattr(cluster, "ClusterLink", HoldingLink)
    yield held
    for hold in held.values():
        hold.release.set()


async def held_hello(
    nursery: trio.Nursery,
    held: dict[str, Hold],
    port: int,
    key: SigningKey,
    *,
    before: bool = False,
) -> trio.MemoryReceiveChannel[dict[str, Any]]:
    """Start `key`'s hello to the broker on `port` and wait until the link holds its admission
    (see Hold); the channel returned gives its welcome once the hold is released."""
    hold = held[did(key)] = Hold(before=before)
    welcome: trio.MemoryReceiveChannel[dict[str, Any]]
    welcome = await nursery.start(_hello_and_welcome, url(port), key)
    with trio.fail_after(WAIT_S):
        await hold.reached.wait()
    return welcome


def degraded(nursery: trio.Nursery, broker: Broker) -> trio.Event:
    """Set if `broker` ever goes degraded from now on (its Redis session ended)."""
    went = trio.Event()

    async def watch() -> None:
        await broker.reach_state("degraded")
        went.set()

    nursery.start_soon(watch)
    return went


def unserved(**config: Any) -> tuple[Broker, trio.MemoryReceiveChannel[Control]]:
    """A clustered broker that is not serving, and the link's end of its control queue (room
    for one command), which the test reads or closes."""
    broker = Broker(BrokerConfig(**config), "redis://127.0.0.1:1/0")
    broker._control, control = trio.open_memory_channel[Control](1)
    return broker, control


async def entry_of(redis: RedisServer, network: str, device_id: str) -> bytes:
    """Redis's raw answer for a device's entry in a network."""
    key = f"meshactors:net:{network}".encode()
    return await _redis_command(redis, b"HGET", key, device_id.encode())


async def test_a_member_admitted_before_redis_answered_is_registered_by_the_late_answer(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    a, a_port = await start(nursery, redis, admission_timeout=ADMISSION_S)
    _, b_port = await start(nursery, redis)
    went_degraded = degraded(nursery, a)
    async with joined(url(b_port), DAVE, "net") as (dave, _):
        held[did(ALICE)] = Hold()
        async with joined(url(a_port), ALICE, "net") as (alice, welcome):
            assert welcome["peers"] == []  # the handshake went on without Redis
            held[did(ALICE)].release.set()
            await next_text(alice, joins(did(DAVE)))  # from the roster of the late answer
            await next_text(dave, joins(did(ALICE)))
            async with joined(url(a_port), BOB, "net"):  # admitted after all Alice's commands
                await next_text(dave, joins(did(BOB)))
            await dave.send_message(encode_batch([(pk(ALICE), b"to alice")]))
            assert await next_batch(alice) == [(pk(DAVE), b"to alice")]
            await alice.send_message(encode_batch([(pk(DAVE), b"to dave")]))
            assert await next_batch(dave) == [(pk(ALICE), b"to dave")]
    assert not went_degraded.is_set()


async def test_a_late_answer_for_a_member_gone_meanwhile_leaves_no_entry(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    a, a_port = await start(nursery, redis, admission_timeout=ADMISSION_S)
    went_degraded = degraded(nursery, a)
    held[did(ALICE)] = Hold()
    async with joined(url(a_port), ALICE, "net"):
        pass  # joined and left before Redis answered
    held[did(ALICE)].release.set()
    async with joined(url(a_port), BOB, "net"):  # admitted after all Alice's commands
        assert await entry_of(redis, "net", did(BOB)) != b"$-1\r\n"
        assert await entry_of(redis, "net", did(ALICE)) == b"$-1\r\n"
    assert not went_degraded.is_set()


async def test_a_member_admitted_before_redis_counted_the_network_full_is_registered(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    a, a_port = await start(nursery, redis, admission_timeout=ADMISSION_S, max_peers=2)
    _, b_port = await start(nursery, redis, max_peers=2)
    went_degraded = degraded(nursery, a)
    async with joined(url(b_port), DAVE, "net"), joined(url(b_port), BOB, "net") as (bob, _):
        held[did(ALICE)] = Hold()
        async with joined(url(a_port), ALICE, "net") as (alice, welcome):
            assert welcome["peers"] == []  # A has no members there: it counted none
            held[did(ALICE)].release.set()
            await next_text(bob, joins(did(ALICE)))  # registered: it is connected after all
            await next_text(alice, joins(did(BOB)))
            await alice.send_message(encode_batch([(pk(BOB), b"to bob")]))
            assert await next_batch(bob) == [(pk(ALICE), b"to bob")]
    assert not went_degraded.is_set()


async def test_a_late_answer_that_a_newer_connection_holds_the_place_closes_the_member(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    a, a_port = await start(nursery, redis, admission_timeout=ADMISSION_S)
    _, b_port = await start(nursery, redis)
    went_degraded = degraded(nursery, a)
    stale = hello(ALICE, "net")  # signed before the connection that will hold the place
    async with (
        joined(url(b_port), DAVE, "net") as (dave, _),
        joined(url(b_port), ALICE, "net") as (alice, _),
    ):
        await next_text(dave, joins(did(ALICE)))
        held[did(ALICE)] = Hold()
        async with connect(url(a_port)) as late:
            await late.send_message(stale)
            await next_text(late, lambda notice: notice["type"] == "welcome")
            held[did(ALICE)].release.set()
            closed = await drained_to_close(late)
        assert (closed.code, closed.reason) == (4409, "replaced")
        await dave.send_message(encode_batch([(pk(ALICE), b"still you")]))
        assert await next_batch(alice) == [(pk(DAVE), b"still you")]
    assert a.figures()["closed_replaced"] == 1
    assert not went_degraded.is_set()


async def test_a_roster_older_than_a_move_it_was_overtaken_by_does_not_undo_it(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    _, a_port = await start(nursery, redis)
    _, b_port = await start(nursery, redis)
    _, c_port = await start(nursery, redis)
    async with (
        joined(url(a_port), BOB, "net") as (bob, _),
        joined(url(b_port), DAVE, "net") as (old_dave, _),
    ):
        await next_text(bob, joins(did(DAVE)))
        carol = await held_hello(nursery, held, a_port, CAROL)  # the roster is read: Dave is on B
        async with joined(url(c_port), DAVE, "net") as (dave, _):  # Dave moves from B to C
            await drained_to_close(old_dave)
            await next_text(bob, joins(did(DAVE)))  # A heard it while Carol's answer waits
            held[did(CAROL)].release.set()
            with trio.fail_after(WAIT_S):
                welcome = await carol.receive()
            assert did(DAVE) in {peer["device_id"] for peer in welcome["peers"]}
            await bob.send_message(encode_batch([(pk(DAVE), b"to where you are")]))
            assert await next_batch(dave) == [(pk(BOB), b"to where you are")]


async def test_a_member_replaced_while_a_hello_is_admitted_keeps_the_mirror_for_it(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    _, a_port = await start(nursery, redis)
    _, b_port = await start(nursery, redis)
    async with (
        joined(url(b_port), DAVE, "net") as (dave, _),
        joined(url(a_port), ALICE, "net") as (old_alice, _),
    ):
        await next_text(dave, joins(did(ALICE)))
        carol = await held_hello(nursery, held, a_port, CAROL)  # the roster is read: Alice is on A
        async with joined(url(b_port), ALICE, "net"):  # Alice, A's last member, moves to B
            await drained_to_close(old_alice)  # A heard it while Carol's answer waits
            held[did(CAROL)].release.set()
            with trio.fail_after(WAIT_S):
                welcome = await carol.receive()
            assert {peer["device_id"] for peer in welcome["peers"]} == {did(DAVE), did(ALICE)}


async def test_an_admission_whose_redis_command_fails_is_answered_at_once(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    _, a_port = await start(nursery, redis, admission_timeout=3600.0)
    alice = await held_hello(nursery, held, a_port, ALICE, before=True)
    await trio.to_thread.run_sync(redis.stop)  # Redis goes away under the admission
    held[did(ALICE)].release.set()
    with trio.fail_after(WAIT_S):  # admitted as in an outage, not after the handshake timeout
        welcome = await alice.receive()
    assert welcome["type"] == "welcome"


async def test_a_hello_whose_admit_could_not_be_queued_is_registered_once_it_joined(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    a, a_port = await start(nursery, redis, admission_timeout=ADMISSION_S, max_connections=1)
    _, b_port = await start(nursery, redis)
    async with joined(url(b_port), DAVE, "net") as (dave, _):
        held[did(ALICE)] = Hold(before=True)  # the link waits on Alice's Admit
        async with joined(url(a_port), ALICE, "net"):
            pass  # joined without Redis and left: its two Departs fill the queue (1 + 1)
        while a.health()["connections"]:
            await trio.testing.wait_all_tasks_blocked()
        async with joined(url(a_port), BOB, "net"):  # its Admit never made it into the queue
            held[did(ALICE)].release.set()
            await next_text(dave, joins(did(BOB)))
        assert await entry_of(redis, "net", did(ALICE)) == b"$-1\r\n"


@attrs.define(eq=False)
class ForgetMirrorsBetweenSteps(trio.abc.Instrument):
    """After every task step, drop the mirrors of `broker` that neither a member nor a hello
    being admitted keeps, as a last member's leave or a refused hello may at any step."""

    broker: Broker

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        for network in list(self.broker._remote):
            self.broker._forget_unused_mirror(network)


async def test_the_roster_of_an_admission_answered_in_time_reaches_the_welcome(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    a, a_port = await start(nursery, redis)
    _, b_port = await start(nursery, redis)
    async with joined(url(b_port), DAVE, "net"):
        instrument = ForgetMirrorsBetweenSteps(a)
        trio.lowlevel.add_instrument(instrument)
        try:
            async with joined(url(a_port), CAROL, "net") as (_, welcome):
                assert [peer["device_id"] for peer in welcome["peers"]] == [did(DAVE)]
        finally:
            trio.lowlevel.remove_instrument(instrument)


async def test_the_leave_of_a_late_admission_waits_for_room_in_a_full_queue(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    a, a_port = await start(nursery, redis, admission_timeout=ADMISSION_S, max_connections=2)
    held[did(CAROL)] = Hold(before=True)  # the link waits on Carol's Admit
    async with joined(url(a_port), CAROL, "net"):
        pass  # joined without Redis and left: two Departs queued
    while a.health()["connections"]:
        await trio.testing.wait_all_tasks_blocked()
    async with joined(url(a_port), ALICE, "net"):
        pass  # its Admit filled the queue (2 + 1): its session's own Depart finds no room
    with trio.fail_after(WAIT_S):
        while not a.figures()["cluster_departs_lost"]:
            await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()  # its admission's Depart too has been tried
    held[did(CAROL)].release.set()
    async with joined(url(a_port), BOB, "net"):  # admitted after all Alice's commands
        assert await entry_of(redis, "net", did(ALICE)) == b"$-1\r\n"
    assert a.figures()["cluster_departs_lost"] == 1


async def test_a_stopping_broker_does_not_wait_for_room_for_the_leave_of_an_admission(
    nursery: trio.Nursery, redis: RedisServer, held: dict[str, Hold]
) -> None:
    stopping, stopped = trio.CancelScope(), trio.Event()

    async def serve(*, task_status: trio.TaskStatus[tuple[Broker, int]]) -> None:
        with stopping:
            async with trio.open_nursery() as serving:
                # admissions outlast the test; the control queue holds 3
                config = {"admission_timeout": WAIT_S * 4, "max_connections": 2}
                task_status.started(await start(serving, redis, **config))
        stopped.set()

    async def say_hello(key: SigningKey, *, task_status: trio.TaskStatus[None]) -> None:
        async with connect(url(a_port)) as ws:  # closed by the stop before any welcome
            await ws.send_message(hello(key, "net"))
            task_status.started()
            await trio.sleep_forever()

    a, a_port = await nursery.start(serve)
    held[did(BOB)] = Hold(leave=True)
    async with joined(url(a_port), DAVE, "net"):
        async with joined(url(a_port), BOB, "net"):
            pass
        with trio.fail_after(WAIT_S):
            await held[did(BOB)].reached.wait()  # the link waits on Bob's leave
    with trio.fail_after(WAIT_S):
        while a.health()["connections"]:  # Dave left: his Depart is queued
            await trio.testing.wait_all_tasks_blocked()
    async with trio.open_nursery() as clients:
        for key in (ALICE, CAROL):  # their Admits fill the queue: their admissions' leaves wait
            await clients.start(say_hello, key)
        with trio.fail_after(WAIT_S):
            while a._control is None or a._control.statistics().current_buffer_used < 3:
                await trio.testing.wait_all_tasks_blocked()
        stopping.cancel()
        held[did(BOB)].release.set()  # the stopping link's own leave may remove Bob's entry
        with trio.fail_after(WAIT_S):  # not after the admission timeout
            await stopped.wait()
        clients.cancel_scope.cancel()
    assert a.figures()["cluster_departs_lost"] == 0  # refused, not given up at the timeout


@attrs.define
class AdmittedAfterTheStop(StopWatchedBroker):
    """A clustered broker whose hellos ask for admission only once _stop ran, and see the stop
    only in what the stopping link answers: the order the scheduler may pick when the
    link's answer and the stop come together."""

    admitting: trio.Event = attrs.field(init=False, factory=trio.Event)

    async def _admit_cluster(
        self, nursery: trio.Nursery, hello: VerifiedHello, decided: trio.Event
    ) -> str:
        self.admitting.set()
        with trio.CancelScope(shield=True):
            await self.stop_ran.wait()
            answer = await super()._admit_cluster(nursery, hello, decided)
        return answer


async def test_a_hello_the_stopping_link_answered_is_closed_going_away_at_once(
    nursery: trio.Nursery, redis: RedisServer
) -> None:
    # a close timeout the stop must not wait out (a deadlock guard, not a speed bound)
    a = AdmittedAfterTheStop(BrokerConfig(close_timeout=3600), redis.url)
    port, shutdown, stopped = await serve_until_stopped(nursery, a)
    await state_is(a, "connected")
    async with connect(url(port)) as alice:
        await alice.send_message(hello(ALICE, "net"))
        with trio.fail_after(WAIT_S):
            await a.admitting.wait()
        shutdown.cancel()
        closed = await closed_with(alice)
        assert (closed.code, closed.reason) == (1001, "going_away")
        with trio.fail_after(WAIT_S):
            await stopped.wait()
    assert a.figures()["closed_going_away"] == 1


async def test_a_hello_whose_admit_never_reached_the_link_queues_no_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker, control = unserved(admission_timeout=ADMISSION_S)
    queued = Depart("other", did(BOB), PresenceEntry("0123456789abcdef", "daemon", wall_ms()))
    broker._control.send_nowait(queued)  # a full queue: the link is behind
    decided = trio.Event()
    async with trio.open_nursery() as nursery:
        admitting = verify_hello(hello(ALICE, "net"), now_ms=wall_ms())
        assert await broker._admit_cluster(nursery, admitting, decided) == "unavailable"
        decided.set()  # refused here: Redis never heard of it, so there is nothing to remove
        await trio.testing.wait_all_tasks_blocked()
        assert control.receive_nowait() == queued
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            control.receive_nowait()


async def test_commands_after_the_link_stopped_are_answered_as_in_an_outage() -> None:
    broker, control = unserved()
    control.close()  # the link stopped with the broker
    async with trio.open_nursery() as nursery:
        admitting = verify_hello(hello(ALICE, "net"), now_ms=wall_ms())
        assert await broker._admit_cluster(nursery, admitting, trio.Event()) == "unavailable"
    await broker._resync()  # no roster to take, and no crash


def test_a_late_admission_is_given_up_while_the_daemon_still_waits_for_its_welcome() -> None:
    assert BrokerConfig().admission_timeout <= WELCOME_TIMEOUT / 2
