"""The Redis link against a real redis-server holding what brokers did not write there (bad
entries, bad set members, keys of another type): it reads past them, counts them, replaces
them where it writes, and keeps its session; a session that fails at once still backs off."""

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import coredis
import pytest
import trio

from meshactors.broker.cluster import RECONNECT_FIRST_S, ClusterLink
from meshactors.broker.cluster_messages import (
    Admit,
    AdmitResult,
    ClusterEvent,
    Control,
    Depart,
    Dropped,
    Forward,
    Resync,
    Roster,
    StateChanged,
)
from meshactors.broker.cluster_wire import (
    BROKERS_KEY,
    PresenceEntry,
    alive_key,
    inbox_channel,
    network_key,
    networks_key,
)
from meshactors.clock import wall_ms
from meshactors.wire.broker import build_hello, verify_hello
from scripts.benchlib.redisserver import RedisServer
from tests.broker.support import WAIT_S, hello
from tests.broker_cluster.test_cluster import ALICE, did

ME = "0123456789abcdef"
BAD = Dropped("cluster_bad_messages")


@attrs.frozen
class Linked:
    """A running link and the test's ends of its channels."""

    link: ClusterLink
    control: trio.MemorySendChannel[Control]
    events: trio.MemoryReceiveChannel[ClusterEvent]

    async def expect(self, wanted: ClusterEvent) -> None:
        """Read events until `wanted`; the link going degraded first fails the test."""
        with trio.fail_after(WAIT_S):
            while (event := await self.events.receive()) != wanted:
                assert event != StateChanged("degraded")

    def seen(self) -> list[ClusterEvent]:
        """The events reported so far and not read yet."""
        events = []
        while True:
            try:
                events.append(self.events.receive_nowait())
            except trio.WouldBlock:
                return events

    async def ask(self, make: Callable[[trio.MemorySendChannel[Any]], Control]) -> Any:
        """Send the command `make` builds around a reply channel; its answer."""
        reply, answer = trio.open_memory_channel[Any](1)
        await self.control.send(make(reply))
        with trio.fail_after(WAIT_S):
            return await answer.receive()


@asynccontextmanager
async def linked(
    url: str, *, heartbeat_s: float = 0.05, ttl_s: float = 8.0
) -> AsyncIterator[Linked]:
    """A link to `url`, running until the block ends (its events are not waited for)."""
    control, commands = trio.open_memory_channel[Control](16)
    _, forwards = trio.open_memory_channel[Forward](16)
    events, reported = trio.open_memory_channel[ClusterEvent](math.inf)
    link = ClusterLink(url, ME, heartbeat_s, ttl_s, commands, forwards, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        yield Linked(link, control, reported)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(redis: RedisServer) -> AsyncIterator["coredis.Redis[bytes]"]:
    async with coredis.Redis.from_url(redis.url) as connection:
        yield connection


def admit_alice(reply: trio.MemorySendChannel[AdmitResult]) -> Admit:
    verified = verify_hello(hello(ALICE, "net"), now_ms=wall_ms())
    return Admit(verified, PresenceEntry(ME, "daemon", verified.ts_ms), 8, reply)


ALICE_ENTRY = PresenceEntry(ME, "daemon", 1_700_000_000_000)


def resync_alice(reply: trio.MemorySendChannel[dict[str, Roster] | None]) -> Resync:
    return Resync([("net", did(ALICE), ALICE_ENTRY)], reply)


@pytest.mark.parametrize("bad", [b"garbage", b'{"b":"0123456789abcdef","r":"daemon","t":"x"}'])
async def test_an_unreadable_entry_is_replaced_by_the_admission_of_its_device(
    redis: RedisServer, bad: bytes
) -> None:
    async with client(redis) as store, linked(redis.url) as link:
        await store.hset(network_key("net"), {did(ALICE): bad})
        await link.expect(StateChanged("connected"))
        result = await link.ask(admit_alice)
        assert result.status == "ok" and list(result.roster) == [did(ALICE)]
        assert (await store.hget(network_key("net"), did(ALICE))) != bad


async def test_an_unreadable_entry_is_replaced_by_the_registration_of_its_device(
    redis: RedisServer,
) -> None:
    async with client(redis) as store, linked(redis.url) as link:
        await store.hset(network_key("net"), {did(ALICE): b"garbage"})
        await link.expect(StateChanged("connected"))
        assert await link.ask(resync_alice) == {"net": {did(ALICE): ALICE_ENTRY}}
        assert (await store.hget(network_key("net"), did(ALICE))) == ALICE_ENTRY.encode().encode()


async def test_set_members_that_are_no_ids_are_counted_at_every_read_and_skipped(
    redis: RedisServer,
) -> None:
    async with client(redis) as store, linked(redis.url) as link:
        await store.sadd(BROKERS_KEY, [b"\xff\xfe", b"not a broker"])
        await store.sadd(networks_key(ME), [b"\xff"])
        await link.expect(StateChanged("connected"))
        for _ in range(3):  # heartbeats that read `brokers`
            await link.expect(BAD)
            await link.expect(BAD)
        assert await link.ask(resync_alice) == {"net": {did(ALICE): ALICE_ENTRY}}
        await link.expect(BAD)  # what the resync read


@pytest.mark.parametrize("key", [BROKERS_KEY, networks_key(ME), network_key("net")])
async def test_a_key_of_another_type_is_replaced_where_the_link_writes_it(
    redis: RedisServer, key: str
) -> None:
    async with client(redis) as store:
        await store.set(key, "not ours")
        async with linked(redis.url) as link:
            assert await link.ask(resync_alice) == {"net": {did(ALICE): ALICE_ENTRY}}
            seen = link.seen()
            assert StateChanged("degraded") not in seen and seen.count(BAD) == 1
        assert await store.type(key) in (b"set", b"hash", b"none")


async def test_a_session_that_fails_at_once_does_not_reset_the_backoff(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with client(redis) as store:  # a user whose heartbeat fails: it may not read sets
        await store.acl_setuser("nosets", "on", "nopass", "~*", "&*", "+@all", "-smembers")
    delays: list[float] = []
    drawn = trio.Event()

    async def degraded_for(self: ClusterLink, seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 6:
            drawn.set()

    monkeypatch.setattr(ClusterLink, "_degraded_for", degraded_for)
    url = redis.url.replace("redis://", "redis://nosets@")
    async with linked(url, heartbeat_s=0.01, ttl_s=60.0) as link:
        with trio.fail_after(WAIT_S * 4):
            await drawn.wait()
        assert link.events.receive_nowait() == StateChanged("connected")  # then it failed
    assert max(delays) > RECONNECT_FIRST_S  # it doubled: 0.25, 0.5, 1, 2, 4, 8, each drawn down


async def test_a_network_leaves_the_brokers_nets_with_its_last_entry_there(
    redis: RedisServer,
) -> None:
    async with client(redis) as store, linked(redis.url) as link:
        result = await link.ask(admit_alice)
        assert result.status == "ok"
        assert await store.smembers(networks_key(ME)) == {b"net"}
        await link.control.send(Depart("net", did(ALICE), result.roster[did(ALICE)]))
        assert await link.ask(lambda reply: Resync([], reply)) == {}  # after the depart
        assert await store.smembers(networks_key(ME)) == set()


async def test_a_resync_trims_the_networks_the_broker_has_no_member_in_any_more(
    redis: RedisServer,
) -> None:
    elsewhere = PresenceEntry("fedcba9876543210", "daemon", ALICE_ENTRY.ts_ms + 1)
    async with client(redis) as store:
        await store.hset(network_key("gone"), {did(ALICE): ALICE_ENTRY.encode()})  # left meanwhile
        await store.hset(network_key("moved"), {did(ALICE): elsewhere.encode()})  # replaced
        await store.sadd(networks_key(ME), ["gone", "moved", "empty"])
        async with linked(redis.url) as link:
            assert await link.ask(resync_alice) == {"net": {did(ALICE): ALICE_ENTRY}}
            assert await store.smembers(networks_key(ME)) == {b"net"}
            assert await store.hgetall(network_key("gone")) == {}


async def test_a_reap_stops_once_the_broker_reaped_is_alive_again(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    back = "fedcba9876543210"  # taken for dead (say, stopped for a while), and back
    entry = PresenceEntry(back, "daemon", ALICE_ENTRY.ts_ms)
    reaped = trio.Event()
    entries, reap = ClusterLink._entries, ClusterLink._reap
    async with client(redis) as store:

        async def entries_then_back(self: ClusterLink, redis: Any, network: str) -> Roster:
            found = await entries(self, redis, network)
            await store.set(alive_key(back), "1", px=60_000)  # its heartbeat, as the reap walks
            return found

        async def reap_and_tell(self: ClusterLink, redis: Any, broker: str) -> None:
            await reap(self, redis, broker)
            reaped.set()

        monkeypatch.setattr(ClusterLink, "_entries", entries_then_back)
        monkeypatch.setattr(ClusterLink, "_reap", reap_and_tell)
        await store.hset(network_key("net"), {did(ALICE): entry.encode()})
        await store.sadd(networks_key(back), ["net"])
        await store.sadd(BROKERS_KEY, [back])
        async with linked(redis.url):
            with trio.fail_after(WAIT_S):
                await reaped.wait()
        assert await store.hget(network_key("net"), did(ALICE)) == entry.encode().encode()
        assert await store.smembers(networks_key(back)) == {b"net"}
        assert back.encode() in await store.smembers(BROKERS_KEY)


async def test_the_heartbeat_goes_on_while_a_reap_takes_long(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reaping = trio.Event()

    async def endless_reap(self: ClusterLink, redis: Any, broker: str) -> None:
        reaping.set()
        await trio.sleep_forever()  # say, a broker with very many networks

    monkeypatch.setattr(ClusterLink, "_reap", endless_reap)
    async with client(redis) as store:
        await store.sadd(BROKERS_KEY, ["fedcba9876543210"])  # dead: no alive: key
        async with store.pubsub(channels=[inbox_channel(ME)]) as ticks, linked(redis.url):
            with trio.fail_after(WAIT_S):
                await reaping.wait()
                for _ in range(3):  # the first may come before, the others after it began
                    while not await ticks.get_message(True, timeout=WAIT_S):  # no subscribes
                        pass


async def test_every_heartbeat_keeps_the_broker_in_brokers(redis: RedisServer) -> None:
    async with client(redis) as store, linked(redis.url) as link:
        await link.expect(StateChanged("connected"))
        await store.set(BROKERS_KEY, "not ours")  # or it was removed while it lived
        async with store.pubsub(channels=[inbox_channel(ME)]) as ticks:
            with trio.fail_after(WAIT_S):
                for _ in range(2):  # the second heartbeat began after the set: it repaired it
                    while not await ticks.get_message(True, timeout=WAIT_S):
                        pass
        assert await store.smembers(BROKERS_KEY) == {ME.encode()}


@pytest.mark.parametrize("command", ["admit", "register"])
async def test_an_entry_of_the_same_hello_time_from_a_larger_broker_id_is_kept(
    redis: RedisServer, command: str
) -> None:
    """Redis orders two entries of a device as the brokers' mirrors do (the hello time, then
    the broker id): a replayed hello of the same time does not take the routing over."""
    ts_ms = wall_ms()
    held = PresenceEntry("fedcba9876543210", "daemon", ts_ms).encode().encode()
    verified = verify_hello(build_hello(ALICE, "net", "daemon", now_ms=ts_ms), now_ms=ts_ms)
    ours = PresenceEntry(ME, "daemon", ts_ms)
    async with client(redis) as store, linked(redis.url) as link:
        await store.hset(network_key("net"), {did(ALICE): held})
        if command == "admit":
            result = await link.ask(lambda reply: Admit(verified, ours, 8, reply))
            assert result.status == "older"
        else:
            await link.ask(lambda reply: Resync([("net", did(ALICE), ours)], reply))
        assert await store.hget(network_key("net"), did(ALICE)) == held
