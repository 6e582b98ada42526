"""The broker's link to Redis: one actor that holds the Redis connection for a clustered broker.

The broker talks to it only through memory channels: control commands (admit, depart,
resync; answered on one-shot reply channels), envelopes to forward (dropped when the queue is
full), and events back (state, presence of other brokers' members, envelopes for ours). While
Redis is unreachable it answers every admission `unavailable`, drops forwards and reconnects
with backoff and jitter (docs/protocol.md, "Brokers in a cluster").
"""

import contextlib
import math
import random
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Literal, TypeVar

import attrs
import coredis
import structlog
import trio
from coredis.exceptions import WrongTypeError
from coredis.retry import NoRetryPolicy

from meshactors.broker.cluster_messages import (
    Admit,
    AdmitResult,
    ClusterEvent,
    Control,
    Delivered,
    Depart,
    Dropped,
    Forward,
    Register,
    Resync,
    Roster,
    StateChanged,
    Unreceived,
)
from meshactors.broker.cluster_wire import (
    BROKERS_KEY,
    PRESENCE_CHANNEL,
    BadClusterMessage,
    PresenceEntry,
    alive_key,
    decode_entry,
    decode_envelopes,
    decode_event,
    encode_envelopes,
    encode_event,
    inbox_channel,
    is_broker_id,
    network_key,
    networks_key,
    nonce_key,
    reap_key,
)
from meshactors.clock import wall_ms
from meshactors.logs import redacted_url
from meshactors.wire.broker import MAX_CLOCK_SKEW_MS, is_network_id
from meshactors.wire.device_id import is_device_id

COMMAND_TIMEOUT_S: Final = 3.0  # one Redis command (or connect); longer is an outage
RECONNECT_FIRST_S: Final = 0.25  # first reconnect delay, doubled each failure...
RECONNECT_MAX_S: Final = 8.0  # ...up to this, each drawn down by up to half (jitter)
PUBLISH_MAX_BYTES: Final = 1 << 20  # envelopes joined into one publish (a larger one goes alone)
# what `cluster_leave_failed` logs when our heartbeat was set again as we left (a renewal still
# in flight when the broker stopped): the reap of our own members stopped, as it stops for any
# broker found alive, and they leave once the heartbeat expires, reaped as a dead broker's
LEFT_ALIVE: Final = "heartbeat set again while leaving: members reaped once it expires"
# characters of the error `cluster_degraded` and `cluster_leave_failed` log: one short line
MAX_CLUSTER_ERROR_CHARS: Final = 200
_ADDRESS: Final = re.compile(r"(\[[^][]+\]|[^][:]+)(:[0-9]*)?")  # HOST[:PORT], IPv6 in [ ]
_DATABASE_PATH: Final = re.compile(r"(/[0-9]*)?")  # a URL's path: none, or a database number
# the query parameters a cluster URL may carry: credentials and TLS, as coredis reads them; the
# others it reads (stream_timeout, noreply…) would replace what the link sets
CLUSTER_URL_PARAMETERS: Final = (
    "username",
    "password",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)
T = TypeVar("T")

# Atomic steps on Redis (Lua). Each publishes its presence event in the same step as the change.
# Which of two entries of a device is newer is decided as server.py's `_newer` decides it: the
# later hello, then the larger broker id (lowercase hex of one length: Lua's strcoll order is
# Python's there). Redis is the brokers' alone, yet what it holds is read as untrusted: an entry
# whose hello time or broker cannot be read counts as absent (a newer one replaces it), and a
# key of another type than the brokers write is replaced (`claim`); both are counted.
_FUNCTIONS: Final = """
local function held_newer(raw, t, b)
  if not raw then return false end
  local ok, entry = pcall(cjson.decode, raw)
  if not (ok and type(entry) == 'table' and type(entry.t) == 'number') then return false end
  if type(entry.b) ~= 'string' then return false end
  return entry.t > t or (entry.t == t and entry.b > b)
end
local function claim(key, kind)
  local found = redis.call('type', key)['ok']
  if found == kind or found == 'none' then return 0 end
  redis.call('del', key)
  return 1
end
local function forget(hash, set, network, broker)
  for _, raw in ipairs(redis.call('hvals', hash)) do
    local ok, entry = pcall(cjson.decode, raw)
    if ok and type(entry) == 'table' and entry.b == broker then return end
  end
  redis.call('srem', set, network)
end
"""
_ADMIT: Final = (
    _FUNCTIONS
    + """
local replaced = claim(KEYS[2], 'hash') + claim(KEYS[4], 'set')
if not redis.call('set', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return {'replayed', replaced} end
local old = redis.call('hget', KEYS[2], ARGV[2])
if not old and redis.call('hlen', KEYS[2]) >= tonumber(ARGV[4]) then return {'full', replaced} end
if held_newer(old, tonumber(ARGV[7]), ARGV[8]) then return {'older', replaced} end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
redis.call('sadd', KEYS[4], ARGV[6])
redis.call('publish', KEYS[3], ARGV[5])
return {'ok', replaced, redis.call('hgetall', KEYS[2])}
"""
)
_REGISTER: Final = (
    _FUNCTIONS
    + """
local replaced = claim(KEYS[1], 'hash') + claim(KEYS[3], 'set')
redis.call('sadd', KEYS[3], ARGV[4])
local old = redis.call('hget', KEYS[1], ARGV[1])
if old == ARGV[2] or held_newer(old, tonumber(ARGV[5]), ARGV[6]) then return replaced end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('publish', KEYS[2], ARGV[3])
return replaced
"""
)
_DEPART: Final = (
    _FUNCTIONS
    + """
local replaced = claim(KEYS[1], 'hash') + claim(KEYS[3], 'set')
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('hdel', KEYS[1], ARGV[1])
  redis.call('publish', KEYS[2], ARGV[3])
end
forget(KEYS[1], KEYS[3], ARGV[4], ARGV[5])
return replaced
"""
)
_FORGET: Final = (
    _FUNCTIONS
    + """
local replaced = claim(KEYS[1], 'hash') + claim(KEYS[2], 'set')
forget(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
return replaced
"""
)
# A reap's steps stop (-1) once the broker reaped is alive again: it registers its members
# again itself, and a step after that would remove what it registered.
_REAP_NETWORK: Final = (
    _FUNCTIONS
    + """
if redis.call('exists', KEYS[1]) == 1 then return -1 end
local replaced = claim(KEYS[2], 'hash')
for i = 1, #ARGV, 3 do
  if redis.call('hget', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('hdel', KEYS[2], ARGV[i])
    redis.call('publish', KEYS[3], ARGV[i + 2])
  end
end
return replaced
"""
)
_REAPED: Final = (
    _FUNCTIONS
    + """
if redis.call('exists', KEYS[1]) == 1 then return -1 end
local replaced = claim(KEYS[3], 'set')
redis.call('del', KEYS[2])
redis.call('srem', KEYS[3], ARGV[1])
return replaced
"""
)
# Set (or, with `renew`, only renew: -1 when it had expired) our `alive:`, and keep our id in
# `brokers` (which a reaper walks).
_BEAT: Final = (
    _FUNCTIONS
    + """
local condition = ARGV[3] == 'renew' and {'XX'} or {}
if not redis.call('set', KEYS[1], '1', 'PX', ARGV[1], unpack(condition)) then return -1 end
local replaced = claim(KEYS[2], 'set')
redis.call('sadd', KEYS[2], ARGV[2])
return replaced
"""
)


@attrs.define
class ClusterLink:
    """Holds the Redis connections of one broker: commands in, publishes and events out."""

    url: str
    broker_id: str
    heartbeat_s: float
    ttl_s: float
    control: trio.MemoryReceiveChannel[Control]
    forwards: trio.MemoryReceiveChannel[Forward]
    events: trio.MemorySendChannel[ClusterEvent]
    _connected_at: float | None = attrs.field(init=False, default=None)  # session began

    async def run(self) -> None:
        """Connect, serve until Redis fails, then serve degraded for a backoff; forever. A
        failed attempt reports `starting` until Redis was first reached, `degraded` after. When
        cancelled (the broker stops) answer the commands still queued as in an outage and
        refuse further ones, so that nobody waits for an answer or for room in the queue
        (their waiters would only end with the broker's stop), and remove our members so that
        peers see `leave` at once (a refused Depart among them)."""
        try:
            failures, state = 0, "starting"
            while True:
                self._connected_at = None
                try:
                    async with self._client() as redis:
                        await self._session(redis)
                except* Exception as group:
                    if not _stopping():
                        error = error_summary(group)
                        _log.warning("cluster_degraded", url=redacted_url(self.url), error=error)
                if self._connected_at is not None:
                    state = "degraded"  # Redis was reached: now it is lost
                await self.events.send(StateChanged(state))
                failures = 1 if self._lived() else failures + 1
                delay = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(failures - 1, 16))
                await self._degraded_for(delay * random.uniform(0.5, 1.0))
        finally:
            self._refuse_queued()
            self.control.close()
            await self._leave()

    def _lived(self) -> bool:
        """Whether the session that ended stayed connected for a TTL: one that fails at once
        (say, on what Redis holds) is a failed attempt, so its retries still back off."""
        connected_at = self._connected_at
        return connected_at is not None and trio.current_time() - connected_at >= self.ttl_s

    def _client(self) -> "coredis.Redis[bytes]":
        return redis_client(self.url)

    async def _session(self, redis: "coredis.Redis[bytes]") -> None:
        with _step("connect"):
            await redis.ping()
            await self._beat(redis, "set")
        async with trio.open_nursery() as nursery:
            await nursery.start(self._subscribe, redis)
            self._connected_at = trio.current_time()
            await self.events.send(StateChanged("connected"))
            _log.info("cluster_connected", url=redacted_url(self.url), broker_id=self.broker_id)
            nursery.start_soon(self._heartbeat, redis)
            nursery.start_soon(self._reaper, redis)
            nursery.start_soon(self._serve_control, redis)
            nursery.start_soon(self._forward, redis)

    async def _subscribe(
        self, redis: "coredis.Redis[bytes]", *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Read our inbox and the presence channel; silence longer than the TTL (our own
        heartbeat ticks our inbox) means the subscription is dead."""
        inbox = inbox_channel(self.broker_id)
        channels = [inbox, PRESENCE_CHANNEL]
        async with redis.pubsub(
            channels=channels, ignore_subscribe_messages=True, retry_policy=NoRetryPolicy()
        ) as pubsub:
            task_status.started()
            silent_until = trio.current_time() + self.ttl_s
            while True:
                with _step("subscribe", self.ttl_s):
                    message = await pubsub.get_message(timeout=self.ttl_s)
                if message is None and trio.current_time() > silent_until:
                    raise trio.TooSlowError("subscribe: the subscription went silent")
                if message is None or message.get("type") != "message":
                    continue
                silent_until = trio.current_time() + self.ttl_s
                data = message["data"]
                try:
                    if message["channel"] == inbox.encode():
                        if isinstance(data, bytes) and data:
                            await self.events.send(Delivered(decode_envelopes(data)))
                    else:
                        await self.events.send(decode_event(data))
                except BadClusterMessage:
                    await self.events.send(Dropped("cluster_bad_messages"))

    async def _heartbeat(self, redis: "coredis.Redis[bytes]") -> None:
        """Renew our `alive:` and tick our inbox every heartbeat; register again if we were
        taken for dead."""
        while True:
            await trio.sleep(self.heartbeat_s)
            with _step("heartbeat"):
                renewed = await self._beat(redis, "renew")
                await redis.publish(inbox_channel(self.broker_id), b"")
            if not renewed:  # we were taken for dead and reaped: register everything again
                _log.warning("cluster_presence_lost", broker_id=self.broker_id)
                with _step("re-register"):
                    await self._beat(redis, "set")
                await self.events.send(StateChanged("connected"))

    async def _reaper(self, redis: "coredis.Redis[bytes]") -> None:
        """Every heartbeat, reap the brokers found dead: apart from the heartbeat, so that a
        long reap (a broker with many networks) does not hold it up and get us taken for dead
        in turn."""
        while True:
            await trio.sleep(self.heartbeat_s)
            await self._reap_dead(redis)

    async def _beat(self, redis: "coredis.Redis[bytes]", how: Literal["set", "renew"]) -> bool:
        """Set or renew our `alive:` and keep our id in `brokers`; False when a renewal found
        `alive:` expired (we were taken for dead)."""
        keys = [alive_key(self.broker_id), BROKERS_KEY]
        args = [str(int(self.ttl_s * 1000)), self.broker_id, how]
        replaced = await redis.eval(_BEAT, keys=keys, args=args)
        if replaced == -1:
            return False
        await self._count_bad(replaced)
        return True

    async def _reap_dead(self, redis: "coredis.Redis[bytes]") -> None:
        """Remove the members of brokers whose heartbeat expired; one broker reaps each."""
        brokers = await self._members(redis, BROKERS_KEY, is_broker_id)
        with _step("reap"):
            alive = await redis.mget([alive_key(b) for b in brokers]) if brokers else ()
        for broker, beat in zip(brokers, alive, strict=True):
            if beat is not None or broker == self.broker_id:
                continue
            with _step("reap"):
                claimed = await redis.set(
                    reap_key(broker), "1", px=int(self.ttl_s * 1000), condition=coredis.PureToken.NX
                )
            if claimed and (networks := await self._reap(redis, broker)) is not None:
                _log.info("cluster_reaped", broker_id=broker, networks=networks)

    async def _reap(self, redis: "coredis.Redis[bytes]", broker: str) -> int | None:
        """Remove a dead (or, leaving, our own) broker's entries network by network, each with
        its `leave`, then its `nets:` and its id in `brokers`; the number of its networks, or
        None when it was found alive again and the reap stopped."""
        networks = await self._members(redis, networks_key(broker), is_network_id)
        for network in networks:
            args: list[str] = []
            for device_id, entry in (await self._entries(redis, network)).items():
                if entry.broker == broker:
                    leave = encode_event(False, network, device_id, entry)
                    args += [device_id, entry.encode(), leave]
            keys = [network_key(network), PRESENCE_CHANNEL]
            if args and not await self._reap_step(redis, broker, _REAP_NETWORK, keys, args):
                return None
        keys = [networks_key(broker), BROKERS_KEY]
        if await self._reap_step(redis, broker, _REAPED, keys, [broker]):
            return len(networks)
        return None

    async def _reap_step(
        self,
        redis: "coredis.Redis[bytes]",
        broker: str,
        script: str,
        keys: list[str],
        args: list[str],
    ) -> bool:
        """Run one step of a reap of `broker`; False when it found that broker alive again
        (the reap ends: it registers its members itself)."""
        with _step("reap"):
            replaced = await redis.eval(script, keys=[alive_key(broker), *keys], args=args)
        if replaced == -1:
            _log.info("cluster_reap_ended_alive", broker_id=broker)
            return False
        await self._count_bad(replaced)
        return True

    async def _serve_control(self, redis: "coredis.Redis[bytes]") -> None:
        while True:
            command = await self.control.receive()
            match command:
                case Depart():
                    await self._depart(redis, command)
                case Admit() | Register() | Resync():
                    with command.reply:  # closed however it ends: a failed command is told
                        await self._answer(redis, command)

    async def _answer(
        self, redis: "coredis.Redis[bytes]", command: Admit | Register | Resync
    ) -> None:
        """Carry out a command the broker waits on and answer it."""
        match command:
            case Admit():
                _offer(command.reply, await self._admit(redis, command))
            case Register(network=network):
                await self._register(redis, network, command.device_id, command.entry)
                _offer(command.reply, await self._live(redis, await self._entries(redis, network)))
            case Resync():
                _offer(command.reply, await self._resync(redis, command.members))

    async def _admit(self, redis: "coredis.Redis[bytes]", admit: Admit) -> AdmitResult:
        hello, entry = admit.hello, admit.entry
        expiry_ms = max(1, hello.ts_ms + MAX_CLOCK_SKEW_MS - wall_ms() + 1000)
        join = encode_event(True, hello.network, hello.device_id, entry)
        keys = [nonce_key(hello.device_id, hello.nonce), network_key(hello.network)]
        keys += [PRESENCE_CHANNEL, networks_key(self.broker_id)]
        args = [str(expiry_ms), hello.device_id, entry.encode(), str(admit.max_peers), join]
        args += [hello.network, str(hello.ts_ms), entry.broker]
        with _step("admit"):
            answer = await redis.eval(_ADMIT, keys=keys, args=args)
        assert isinstance(answer, list)
        await self._count_bad(answer[1])
        status = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        if status != "ok":
            return AdmitResult(status)
        flat = answer[2]
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        return AdmitResult("ok", await self._live(redis, await self._decoded(raw)))

    async def _depart(self, redis: "coredis.Redis[bytes]", depart: Depart) -> None:
        """Remove a member's entry if it is still this one, and the network from its broker's
        `nets:` once that broker has no entry left there."""
        network, broker = depart.network, depart.entry.broker
        leave = encode_event(False, network, depart.device_id, depart.entry)
        keys = [network_key(network), PRESENCE_CHANNEL, networks_key(broker)]
        args = [depart.device_id, depart.entry.encode(), leave, network, broker]
        with _step("depart"):
            replaced = await redis.eval(_DEPART, keys=keys, args=args)
        await self._count_bad(replaced)

    async def _register(
        self, redis: "coredis.Redis[bytes]", network: str, device_id: str, entry: PresenceEntry
    ) -> None:
        """Record our member's entry (with its `join`) unless Redis holds it or a newer one."""
        join = encode_event(True, network, device_id, entry)
        keys = [network_key(network), PRESENCE_CHANNEL, networks_key(self.broker_id)]
        args = [device_id, entry.encode(), join, network, str(entry.ts_ms), entry.broker]
        with _step("register"):
            replaced = await redis.eval(_REGISTER, keys=keys, args=args)
        await self._count_bad(replaced)

    async def _resync(
        self, redis: "coredis.Redis[bytes]", members: list[tuple[str, str, PresenceEntry]]
    ) -> dict[str, Roster]:
        ours = {(network, device_id) for network, device_id, _ in members}
        for network, device_id, entry in members:
            await self._register(redis, network, device_id, entry)
        registered = await self._members(redis, networks_key(self.broker_id), is_network_id)
        rosters: dict[str, Roster] = {}
        for network in sorted(set(registered) | {network for network, _ in ours}):
            entries = await self._entries(redis, network)
            for device_id, entry in entries.items():
                if entry.broker == self.broker_id and (network, device_id) not in ours:
                    await self._depart(redis, Depart(network, device_id, entry))
            if any(n == network for n, _ in ours):
                rosters[network] = await self._live(redis, entries)
            else:  # none of ours is left there (some may have been replaced elsewhere)
                await self._forget(redis, network)
        return rosters

    async def _forget(self, redis: "coredis.Redis[bytes]", network: str) -> None:
        """Remove a network from our `nets:` unless we have an entry there."""
        keys = [network_key(network), networks_key(self.broker_id)]
        with _step("resync"):
            replaced = await redis.eval(_FORGET, keys=keys, args=[network, self.broker_id])
        await self._count_bad(replaced)

    async def _entries(self, redis: "coredis.Redis[bytes]", network: str) -> Roster:
        """A network's entries that can be read (a key of another type holds none)."""
        try:
            with _step("read a roster"):
                raw = await redis.hgetall(network_key(network))
        except WrongTypeError:
            await self._count_bad(1)
            return {}
        return await self._decoded(raw)

    async def _decoded(self, raw: dict[bytes, bytes]) -> Roster:
        """The entries that can be read; the others are counted and skipped: not ours to
        repair, a newer entry of their device replaces them."""
        roster: Roster = {}
        for device_id, value in raw.items():
            try:
                name, entry = device_id.decode(), decode_entry(value)
            except (BadClusterMessage, UnicodeDecodeError):
                name = ""
            if is_device_id(name):
                roster[name] = entry
            else:
                await self._count_bad(1)
        return roster

    async def _members(
        self, redis: "coredis.Redis[bytes]", key: str, valid: Callable[[str], bool]
    ) -> list[str]:
        """The members of one of our sets that are `valid` (the others are counted and
        skipped; a key of another type holds none)."""
        try:
            with _step("read a set"):
                raw = await redis.smembers(key)
        except WrongTypeError:
            await self._count_bad(1)
            return []
        members: list[str] = []
        for member in raw:
            try:
                name = member.decode()
            except UnicodeDecodeError:
                name = ""
            if valid(name):
                members.append(name)
            else:
                await self._count_bad(1)
        return members

    async def _count_bad(self, count: object) -> None:
        """Count what a script or read found unreadable on Redis (dropped or replaced)."""
        assert isinstance(count, int)
        for _ in range(count):
            await self.events.send(Dropped("cluster_bad_messages"))

    async def _live(self, redis: "coredis.Redis[bytes]", roster: Roster) -> Roster:
        """The entries whose broker's heartbeat is alive (a dead one's are about to go)."""
        brokers = sorted({entry.broker for entry in roster.values()})
        if not brokers:
            return {}
        with _step("read heartbeats"):
            beats = await redis.mget([alive_key(b) for b in brokers])
        alive = {b for b, beat in zip(brokers, beats, strict=True) if beat is not None}
        return {d: entry for d, entry in roster.items() if entry.broker in alive}

    async def _forward(self, redis: "coredis.Redis[bytes]") -> None:
        """Publish waiting envelopes: all those for one broker in one message. One that no
        broker received is reported, so that its sender is told."""
        while True:
            waiting = [await self.forwards.receive()]
            size = len(waiting[0].envelope.batch)
            while size < PUBLISH_MAX_BYTES:
                try:
                    waiting.append(self.forwards.receive_nowait())
                except trio.WouldBlock:
                    break
                size += len(waiting[-1].envelope.batch)
            by_broker: dict[str, list[Forward]] = {}
            for forward in waiting:
                by_broker.setdefault(forward.broker, []).append(forward)
            for broker, forwards in by_broker.items():
                message = encode_envelopes([forward.envelope for forward in forwards])
                with _step("publish"):
                    received = await redis.publish(inbox_channel(broker), message)
                if not received:  # that broker died: its members are about to be reaped
                    await self.events.send(Unreceived(forwards))

    async def _degraded_for(self, seconds: float) -> None:
        """Answer admissions `unavailable` and drop forwards until `seconds` have passed."""
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refuse_control)
                nursery.start_soon(self._drop_forwards)

    async def _refuse_control(self) -> None:
        async for command in self.control:
            _refuse(command)

    def _refuse_queued(self) -> None:
        """Answer every command in the queue (and every sender waiting for room) as in an
        outage, without a checkpoint: closing the queue right after drops nothing unanswered."""
        while True:
            try:
                _refuse(self.control.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def _drop_forwards(self) -> None:
        async for _ in self.forwards:
            await self.events.send(Dropped("cluster_forwards_lost"))

    async def _leave(self) -> None:
        """On shutdown: remove our members and heartbeat so peers see `leave` at once, and log
        our departure (`cluster_left`: no other broker reaped us), or why it did not happen
        (`cluster_leave_failed`: Redis not answering within COMMAND_TIMEOUT_S, or LEFT_ALIVE)."""
        try:
            with trio.CancelScope(shield=True), _step("leave"):
                async with self._client() as redis:
                    await redis.delete([alive_key(self.broker_id)])
                    networks = await self._reap(redis, self.broker_id)
        except* Exception as group:
            _log.info("cluster_leave_failed", error=error_summary(group))
        else:
            if networks is None:
                _log.info("cluster_leave_failed", error=LEFT_ALIVE)
            else:
                _log.info("cluster_left", broker_id=self.broker_id, networks=networks)


def redis_client(url: str) -> "coredis.Redis[bytes]":
    """The link's client for `url` (it connects when first used): one command at a time, none
    retried (a retried publish could deliver an envelope twice)."""
    return coredis.Redis.from_url(
        url,
        connect_timeout=COMMAND_TIMEOUT_S,
        stream_timeout=COMMAND_TIMEOUT_S,
        retry_policy=NoRetryPolicy(),
    )


def check_cluster_url(url: str) -> None:
    """Raise ValueError saying what a cluster URL must be, before a broker starts on it:
    coredis reads a malformed one silently (`/abc` as database 0, `/1/2` as 12) or fails only
    on connecting, which the link would retry for ever. The message never shows the URL."""
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError("a redis:// or rediss:// URL")
    bad_address = "a URL whose address is HOST or HOST:PORT, the port from 1 to 65535"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # an unclosed "[", a port out of range
        raise ValueError(bad_address) from None
    if not _ADDRESS.fullmatch(parts.netloc.rpartition("@")[2]) or port == 0:
        raise ValueError(bad_address)  # urllib reads [::1]x:5 as [::1]:5, and :0 as port 0
    if not _DATABASE_PATH.fullmatch(parts.path):
        raise ValueError("a URL whose path is empty or a database number (/0)")
    parameters = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if "db" in parameters:
        raise ValueError("a URL with its database in the path (/N), not in ?db=")
    if other := [name for name in parameters if name not in CLUSTER_URL_PARAMETERS]:
        allowed = ", ".join(CLUSTER_URL_PARAMETERS)
        raise ValueError(f"a URL whose query parameters are among {allowed}, not {other[0]!r}")
    tls = [name for name in parameters if name.startswith("ssl_")]
    if tls and url.startswith("redis://"):  # coredis would connect without TLS, silently
        raise ValueError(
            f"a rediss:// URL to take TLS parameters ({tls[0]}): redis:// connects without TLS"
        )
    try:
        redis_client(url)  # a rediss:// URL's TLS context is made here
    except (KeyError, OSError):  # ?ssl_cert_reqs=bogus, an ssl_* file missing or no PEM
        raise ValueError(
            "a URL whose TLS parameters coredis can use: ssl_cert_reqs none, optional or"
            " required, and ssl_* files that hold PEM"
        ) from None


def _refuse(command: Control) -> None:
    """Answer a command as Redis being unreachable does: an admission `unavailable`, a
    registration or resync without a roster."""
    match command:
        case Admit():
            with command.reply:
                _offer(command.reply, AdmitResult("unavailable"))
        case Register() | Resync():
            with command.reply:
                _offer(command.reply, None)
        case Depart():
            pass  # the resync after an outage, or the leave of a stopping link, drops its entry


@contextlib.contextmanager
def _step(name: str, seconds: float = COMMAND_TIMEOUT_S) -> Iterator[None]:
    """trio.fail_after whose TooSlowError names the step Redis did not answer in time (admit,
    heartbeat, publish…): `cluster_degraded` logs it, and an empty one says nothing."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError as slow:
        raise trio.TooSlowError(f"{name}: no answer from Redis within {seconds} s") from slow


def _stopping() -> bool:
    """Whether the link is being cancelled (its broker stops): coredis's tasks then end in
    errors of their own (ClosedResourceError), which are the stop, not an outage."""
    return trio.current_effective_deadline() == -math.inf


def error_summary(group: BaseExceptionGroup[Exception]) -> str:
    """The group's first error in one stable short line: its class name, then its message
    (if any) on one line, at most MAX_CLUSTER_ERROR_CHARS in all: what an operator alerts and
    greps on, whatever coredis, the OS or a Lua script put in the message."""
    leaves: Iterable[BaseException] = group.exceptions
    first = next(iter(leaves))
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    message = " ".join(str(first).split())
    summary = f"{type(first).__name__}: {message}" if message else type(first).__name__
    if len(summary) > MAX_CLUSTER_ERROR_CHARS:
        summary = summary[: MAX_CLUSTER_ERROR_CHARS - 1] + "…"
    return summary


def _offer(reply: trio.MemorySendChannel[T], value: T) -> None:
    """Answer a broker's command. A broker that stopped waiting (the connection behind an
    admission ended) closed its end: the answer is dropped, not a Redis outage, and the broker
    has queued what squares Redis with it (a Depart)."""
    with contextlib.suppress(trio.BrokenResourceError):
        reply.send_nowait(value)
